"""A local HTTP server for tests and the benchmark: files of a folder over HTTP/1.1 on 127.0.0.1, with range
requests, injected latency and seeded faults, counting every request and body byte it sends.

    with RangeServer(folder, latency=0.02) as server:
        url = server.url("train2017.zip")          # http://127.0.0.1:<port>/train2017.zip
        ...
        server.requests, server.bytes_sent         # totals since start (or reset_stats())
        server.log                                 # one Hit per request: path, range, status, body bytes sent,
                                                   # request headers (lower-case names)
        server.configure(fault_rate=0.2, faults=("503", "reset"))   # change behaviour between steps

Ranges: one range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answered 206 with Content-Range;
outside the file 416; several ranges, or `ignore_range=True`, the whole file with 200. Every answer
carries an ETag (from size and mtime, so rewriting a file changes it) and Last-Modified, and `If-Range`
is honoured (a stale validator gets the whole file, as RFC 9110 says).

Faults hit a fraction `fault_rate` of the GETs of a file (ranged or not). Which requests fail is decided
by a hash of (seed, path, range, how many times that same request was seen), not by arrival order, so a
run with many requests in flight fails the same requests every time, and a retried request is a new
draw. (A reset may drop bytes the client had not read yet, so where a resumed range starts can vary.)
Kinds:
  "503"      answer 503 Service Unavailable
  "reset"    send the headers and half the body, then reset the connection (RST)
  "short"    a 206 whose Content-Length and body are half of what its Content-Range claims; for a GET
             without Range, half the declared Content-Length and then the connection closed (FIN)
  "stall"    send the headers, then wait `stall` seconds before the body (for client timeouts)
  "corrupt"  a complete answer with one byte in the middle of the body inverted (a CRC check must catch it)
`script=["reset", None, "503"]` gives the next requests these faults (None: none) in arrival order, before
any draw: for tests that need one exact failure. `status={"name": 404}` answers a fixed status for a file
(404, 403, 410 ...); a file that is not there is 404 anyway. `redirects={"name": url}` answers 302.

`GET /_stats` answers {"requests": n, "bytes_sent": n} as JSON (itself not counted), for a server run in
another process:

    python tests/httpserver.py FOLDER [--latency 0.02] [--bandwidth 50e6]   # prints its URL, serves until killed
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULTS = ("503", "reset", "short", "stall", "corrupt")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 << 10


@dataclass
class Hit:
    """One request the server answered: what was asked and how much body it sent."""

    method: str
    path: str
    range: str | None
    status: int
    sent: int
    fault: str | None = None
    headers: dict[str, str] | None = None


class RangeServer:
    """Serves the files under `root` on http://127.0.0.1:<free port>/ until `stop()` (or the `with` block ends).

    latency     seconds slept before answering each request (a round trip to a far server)
    bandwidth   bytes/s shared by all connections (None: as fast as loopback goes)
    fault_rate  fraction of range requests that get one of `faults` (see the module docstring)
    seed        the seed of that choice
    ignore_range  answer every GET with the whole file (200), as servers without range support do
    status      {file name: HTTP status} answered instead of the file
    stall       seconds a "stall" fault waits before the body
    script      faults for the next range requests, in order, before any draw (None: no fault)
    redirects   {file name: URL} answered 302 with that Location (as the Hub sends files to its CDN)
    validators  send ETag and Last-Modified (False: neither, as some servers do)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = ("503", "reset", "short"),
        seed: int = 0,
        ignore_range: bool = False,
        status: dict[str, int] | None = None,
        stall: float = 2.0,
        script: list[str | None] | None = None,
        redirects: dict[str, str] | None = None,
        validators: bool = True,
    ):
        self.root = Path(root)
        self.latency = latency
        self.bandwidth = bandwidth
        self.fault_rate = fault_rate
        self.faults = faults
        self.seed = seed
        self.ignore_range = ignore_range
        self.status = dict(status or {})
        self.stall = stall
        self.script = list(script or [])
        self.redirects = dict(redirects or {})
        self.validators = validators
        self._check()
        self._lock = threading.Lock()
        self._seen: dict[tuple, int] = {}
        self._line_free = 0.0  # when the shared bandwidth is next free (time.monotonic)
        self.log: list[Hit] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def _check(self) -> None:
        unknown = [f for f in (*self.faults, *self.script) if f is not None and f not in FAULTS]
        if unknown:
            raise ValueError(f"faults must be among {FAULTS}, got {unknown}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {self.fault_rate}")

    # -- the API tests use ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str = "") -> str:
        """The URL of file `name` (a path relative to the root)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def configure(self, **options) -> None:
        """Change any constructor option (latency, fault_rate, faults, seed, ignore_range, status, ...)."""
        for key, value in options.items():
            if key == "root" or not hasattr(self, key) or key.startswith("_"):
                raise TypeError(f"unknown option {key!r}")
            setattr(self, key, value)
        self._check()

    def reset_stats(self) -> None:
        """Forget the requests so far (log, counts, and which requests were already seen by the fault draw)."""
        with self._lock:
            self.log = []
            self._seen = {}

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def bytes_sent(self) -> int:
        """Body bytes handed to the sockets (headers not counted; a chunk cut off by a client that closed
        the connection counts whole)."""
        return sum(hit.sent for hit in self.log)

    def start(self) -> RangeServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="RangeServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------------

    def _fault_for(self, path: str, byte_range: str) -> str | None:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if not self.fault_rate or not self.faults:
            return None
        key = (path, byte_range)
        with self._lock:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
        digest = hashlib.blake2b(f"{self.seed}|{path}|{byte_range}|{seen}".encode(), digest_size=16).digest()
        draw, pick = struct.unpack("<QQ", digest)
        if draw / 2**64 >= self.fault_rate:
            return None
        return self.faults[pick % len(self.faults)]

    def _throttle(self, n: int) -> None:
        if not self.bandwidth:
            return
        with self._lock:
            start = max(self._line_free, time.monotonic())
            self._line_free = start + n / self.bandwidth
        delay = self._line_free - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.log.append(hit)


def _handler(server: RangeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers and pooled clients use it
        timeout = 30  # an idle keep-alive connection never holds a thread forever
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms ACK wait

        def log_message(self, format, *args):  # quiet: the log list is the record
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            if self.path == "/_stats":
                with server._lock:
                    totals = {"requests": len(server.log), "bytes_sent": sum(hit.sent for hit in server.log)}
                message = json.dumps(totals).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
                return
            range_header = self.headers.get("Range")
            path = unquote(urlsplit(self.path).path).lstrip("/")
            hit = Hit(self.command, path, range_header, 0, 0, headers={k.lower(): v for k, v in self.headers.items()})
            server._record(hit)  # logged first, so a test that has its bytes always finds the request
            try:
                self._answer(hit, body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading (as it must for a 200 it refuses)

        def _status_only(self, hit: Hit, status: int) -> None:
            message = f"{status}\n".encode()
            # Recorded before the headers go out: a client may stop at the status and never read the body.
            hit.status, hit.sent = status, len(message)
            self.send_response(status)
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)

        def _answer(self, hit: Hit, body: bool) -> None:
            if server.latency:
                time.sleep(server.latency)
            if hit.path in server.status:
                return self._status_only(hit, server.status[hit.path])
            if hit.path in server.redirects:
                hit.status = 302
                self.send_response(302)
                self.send_header("Location", server.redirects[hit.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = server.root / hit.path
            if ".." in Path(hit.path).parts or not path.is_file():
                return self._status_only(hit, 404)
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                size = st.st_size
                etag = f'"{size:x}-{st.st_mtime_ns:x}"'
                modified = email.utils.formatdate(st.st_mtime, usegmt=True)
                span = self._range(hit.range, size)
                if_range = self.headers.get("If-Range")
                if if_range is not None and if_range not in (etag, modified):
                    span = None  # the client's copy is stale: the whole (new) file
                if span == "unsatisfiable":
                    hit.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, length = (0, size) if span is None else span
                # Faults hit range requests and plain GETs, not the 200 answer to a refused range (kept exact).
                faulty = span is not None or hit.range is None
                fault = server._fault_for(hit.path, hit.range or "") if faulty else None
                hit.fault = fault
                if fault == "503":
                    return self._status_only(hit, 503)
                hit.status = 200 if span is None else 206
                claimed = length
                cut = fault == "reset" or (fault == "short" and span is None)
                if fault == "short" and span is not None:
                    length //= 2
                self.send_response(hit.status)
                self.send_header("Accept-Ranges", "none" if server.ignore_range else "bytes")
                if server.validators:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", modified)
                self.send_header("Content-Type", "application/octet-stream")
                if span is not None:
                    self.send_header("Content-Range", f"bytes {start}-{start + claimed - 1}/{size}")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if not body:
                    return
                if fault == "stall":
                    self.wfile.flush()
                    time.sleep(server.stall)
                stop = start + (length // 2 if cut else length)
                f.seek(start)
                position = start
                flip = start + length // 2 if fault == "corrupt" else -1
                while position < stop:
                    chunk = f.read(min(_CHUNK, stop - position))
                    if position <= flip < position + len(chunk):
                        i = flip - position
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    server._throttle(len(chunk))
                    hit.sent += len(chunk)  # counted before it can reach the client, so no test sees less
                    self.wfile.write(chunk)
                    position += len(chunk)
                if fault == "short" and span is None:
                    self.close_connection = True  # FIN before the declared Content-Length
                if fault == "reset":
                    self.wfile.flush()
                    # SO_LINGER 0: close() sends RST instead of FIN, as a dropped connection looks.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()

        def _range(self, header: str | None, size: int):
            """(start, length) of a single satisfiable range, None for the whole file, or "unsatisfiable"."""
            if header is None or server.ignore_range:
                return None
            match = _RANGE.match(header.strip())
            if match is None:
                return None  # several ranges or another unit: the whole file (allowed by RFC 9110)
            first, last = match.groups()
            if not first and not last:
                return None
            if not first:  # a suffix: the last n bytes
                n = int(last)
                if n == 0 or size == 0:
                    return "unsatisfiable"
                return max(0, size - n), min(n, size)
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size or end < start:
                return "unsatisfiable"
            return start, end - start + 1

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a folder with range requests on 127.0.0.1 until killed.")
    parser.add_argument("root", help="the folder to serve")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept before each answer")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s shared by all connections")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of range requests given a fault")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = RangeServer(
        args.root, latency=args.latency, bandwidth=args.bandwidth, fault_rate=args.fault_rate, seed=args.seed
    )
    print(server.url(), flush=True)
    server._server.serve_forever(0.05)


if __name__ == "__main__":
    main()
