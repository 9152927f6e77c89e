"""Servers that misbehave in ways tests/httpserver.py does not play: each answer written by hand, on
127.0.0.1, by a small socket server. Every case ends in bounded time with an error naming the URL, or with
the right bytes, and never reads (or keeps) more than it asked for."""

from __future__ import annotations

import re
import socketserver
import threading
import time

import pytest
from conftest import jpeg

from llava_hf.errors import BadImage
from llava_hf.remote import HttpFile, RemoteError, RemoteFolderRoot, Retry

BODY = bytes(range(256)) * 4096  # 1 MiB, every byte's value its offset mod 256
FAST = Retry(attempts=4, base=0.001, cap=0.01, total=10.0)


class Server:
    """Answers every request with `behaviour(handler, method, path, headers)`; counts requests and the body
    bytes `send` put on the wire before the client went away."""

    def __init__(self, behaviour):
        self.behaviour, self.requests, self.sent, self.log = behaviour, 0, 0, []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    method, path, _ = line.decode("latin-1").split(" ", 2)
                    headers = {}
                    while (header := self.rfile.readline().decode("latin-1").strip()) != "":
                        name, _, value = header.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    outer.requests += 1
                    outer.log.append(headers.get("range"))
                    try:
                        if outer.behaviour(self, method, path, headers) == "close":
                            return
                    except (BrokenPipeError, ConnectionResetError):
                        return

            def send(self, head: str, body: bytes = b"", chunk: int = 1 << 16) -> None:
                self.wfile.write(head.encode("latin-1"))
                for at in range(0, len(body), chunk):
                    self.wfile.write(body[at : at + chunk])
                    self.wfile.flush()
                    outer.sent += min(chunk, len(body) - at)

        class TCPServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = TCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    started = []

    def start(behaviour) -> Server:
        started.append(Server(behaviour))
        return started[-1]

    yield start
    for server in started:
        server.close()


def asked(headers: dict, size: int) -> tuple[int, int]:
    """(first, last) byte of the request's Range header, for a file of `size` bytes."""
    first, last = headers["range"].removeprefix("bytes=").split("-")
    if not first:
        return size - int(last), size - 1
    return int(first), min(int(last), size - 1)


def ranged(handler, headers, body=BODY, *, start=None, end=None, extra="") -> None:
    """A 206 of what was asked (or of [start, end] when given), with its Content-Range."""
    first, last = asked(headers, len(body))
    first = first if start is None else start
    last = last if end is None else end
    part = body[first : last + 1]
    handler.send(
        f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{len(body)}\r\n"
        f'Content-Length: {len(part)}\r\nETag: "v1"\r\n{extra}\r\n',
        part,
    )


def test_a_redirect_loop_is_named_at_once(serve):
    server = serve(
        lambda h, m, path, headers: h.send(f"HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\n\r\n")
    )
    f = HttpFile(server.url("a.zip"), retry=FAST)
    with pytest.raises(RemoteError) as e:
        _ = f.size
    assert str(e.value) == (
        f"{server.url('a.zip')}: the last 65,577 bytes: TooManyRedirects: Exceeded maximum allowed redirects."
    )
    assert server.requests == 21  # httpx's 20 redirects, once: no retry of what cannot change
    root = RemoteFolderRoot(server.url("coco"))
    (bad,) = root.read_many(["a.jpg"])
    assert isinstance(bad, BadImage) and bad.reason == "unreadable"
    assert str(bad) == f"{server.url('coco/a.jpg')}: TooManyRedirects: Exceeded maximum allowed redirects."


def test_a_range_answered_past_its_end_is_read_no_further(serve):
    big = bytes(range(256)) * (64 << 12)  # 64 MiB
    server = serve(lambda h, m, p, headers: ranged(h, headers, big, end=len(big) - 1))
    f = HttpFile(server.url("a.zip"), retry=FAST)
    assert f.size == len(big)
    assert f.read_at(1000, 3000) == big[1000:4000]
    time.sleep(0.2)  # the server's writes end when the client has closed the connection
    assert server.sent < 16 << 20  # the tail, the 3,000 bytes, and what the socket buffers took: not 64 MiB


def test_a_suffix_range_answered_from_the_start_is_asked_again_by_offset(serve):
    def behaviour(handler, method, path, headers):
        if headers["range"].startswith("bytes=-"):
            return ranged(handler, headers, start=0, end=65_576)  # the first bytes, not the last
        return ranged(handler, headers)

    server = serve(behaviour)
    f = HttpFile(server.url("a.zip"), retry=FAST)
    assert f.size == len(BODY)
    assert f.read_at(len(BODY) - 100, 100) == BODY[-100:]
    assert server.log == ["bytes=-65577", f"bytes={len(BODY) - 65577}-{len(BODY) - 1}"]
    assert server.sent <= 2 * 65_577  # the two answers at most (the first may be cut when it is dropped)


def trickle_headers(handler, method, path, headers):
    handler.wfile.write(b"HTTP/1.1 206 Partial Content\r\n")
    for k in range(1000):
        handler.wfile.write(f"X-Wait-{k}: 1\r\n".encode())
        handler.wfile.flush()
        time.sleep(0.2)
    return "close"


def trickle_processing(handler, method, path, headers):
    for _ in range(1000):
        handler.wfile.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        handler.wfile.flush()
        time.sleep(0.2)
    return "close"


@pytest.mark.parametrize("behaviour", [trickle_headers, trickle_processing], ids=["header lines", "102 Processing"])
def test_an_answer_that_never_completes_its_head_is_bounded(serve, behaviour):
    server = serve(behaviour)
    f = HttpFile(server.url("a.zip"), timeout=5.0, retry=Retry(attempts=3, base=0.01, total=1.5))
    started = time.monotonic()
    with pytest.raises(
        RemoteError,
        match=r": the last 65,577 bytes: gave up after 1 attempts in [12]\.\d s; last: no whole answer within 1\.5 s \(ReadTimeout",
    ):
        _ = f.size
    assert time.monotonic() - started < 4


def test_a_folder_image_trickled_forever_is_bounded(serve):
    def behaviour(handler, method, path, headers):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            handler.wfile.write(b"\xff")
            handler.wfile.flush()
            time.sleep(0.2)
        return "close"

    server = serve(behaviour)
    root = RemoteFolderRoot(server.url("coco"))
    root.retry = Retry(attempts=3, base=0.01, total=1.5)
    started = time.monotonic()
    (bad,) = root.read_many(["a.jpg"])
    assert isinstance(bad, BadImage) and bad.reason == "unreadable"
    assert re.match(re.escape(server.url("coco/a.jpg")) + r": gave up after 1 attempts in [12]\.\d s; ", str(bad))
    assert time.monotonic() - started < 4


def test_a_folder_image_without_a_length_is_checked_by_its_own_end(serve):
    whole = jpeg(3)
    assert whole.endswith(b"\xff\xd9")

    def behaviour(handler, method, path, headers):  # no Content-Length: the body ends with the connection
        handler.send(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", whole if "whole" in path else whole[: len(whole) // 2]
        )
        return "close"

    server = serve(behaviour)
    root = RemoteFolderRoot(server.url("coco"))
    root.retry = Retry(attempts=2, base=0.001, total=5)
    good, cut = root.read_many(["whole.jpg", "cut.jpg"])
    assert good == ("whole.jpg", whole)
    assert isinstance(cut, BadImage) and cut.reason == "unreadable"
    assert str(cut) == (
        f"{server.url('coco/cut.jpg')}: gave up after 2 attempts in {str(cut).split(' in ')[1].split(' s;')[0]} s; "
        f"last: the body ended with the connection after {len(whole) // 2:,} bytes, before the image's end (no "
        "Content-Length to check it by)"
    )


def test_an_encoded_answer_is_named_not_taken_for_the_file(serve):
    def behaviour(handler, method, path, headers):
        if "range" in headers:
            return ranged(handler, headers, extra="Content-Encoding: gzip\r\n")
        handler.send("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n", b"\x1f\x8b\x08\x00")

    server = serve(behaviour)
    with pytest.raises(RemoteError) as e:
        _ = HttpFile(server.url("a.zip"), retry=FAST).size
    assert str(e.value) == (
        f"{server.url('a.zip')}: 'bytes=-65577': the server sent gzip-encoded bytes though identity (the file's own) "
        "was asked"
    )
    assert server.log == ["bytes=-65577"]
    (bad,) = RemoteFolderRoot(server.url("coco")).read_many(["a.jpg"])
    assert (
        str(bad)
        == f"{server.url('coco/a.jpg')}: the server sent gzip-encoded bytes though identity (the file's own) was asked"
    )


def test_a_server_that_stops_answering_costs_one_spans_retries(serve):
    state = {"dead": False}

    def behaviour(handler, method, path, headers):
        if state["dead"]:
            return handler.send("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        return ranged(handler, headers)

    server = serve(behaviour)
    f = HttpFile(server.url("a.zip"), retry=Retry(attempts=3, base=0.001, cap=0.01, total=10))
    assert f.size == len(BODY)
    state["dead"] = True
    with pytest.raises(RemoteError) as first:
        f.read_at(0, 100)
    assert str(first.value).startswith(f"{server.url('a.zip')}: bytes 0-99: gave up after 3 attempts in ")
    assert server.requests == 1 + 3
    with pytest.raises(RemoteError) as later:
        f.read_at(5000, 100)
    assert str(later.value).startswith(
        f"{server.url('a.zip')}: bytes 5000-5099: not asked, since bytes 0-99 gave up after 3 attempts in "
    )
    assert str(later.value).endswith("; last: HTTP 503 Service Unavailable")
    assert server.requests == 4  # nothing more asked of it


def test_ranges_capped_by_the_server_are_followed_without_waiting(serve):
    server = serve(
        lambda h, m, p, headers: ranged(
            h, headers, end=min(asked(headers, len(BODY))[1], asked(headers, len(BODY))[0] + 999)
        )
    )
    f = HttpFile(server.url("a.zip"), retry=Retry(attempts=2, base=5.0, total=30))  # a wait would take 2.5-5 s
    assert f.size == len(BODY)  # 66 capped answers for the tail, asked by offset after the first
    started = time.monotonic()
    assert f.read_at(10, 4500) == BODY[10:4510]
    assert time.monotonic() - started < 2
    assert server.log[-5:] == [
        "bytes=10-4509",
        "bytes=1010-4509",
        "bytes=2010-4509",
        "bytes=3010-4509",
        "bytes=4010-4509",
    ]


def test_the_deadline_leaves_ordinary_timeouts_alone(serve):
    def behaviour(handler, method, path, headers):
        time.sleep(0.6)  # longer than the client's timeout once, then answered
        return ranged(handler, headers)

    server = serve(behaviour)
    f = HttpFile(server.url("a.zip"), timeout=0.3, retry=Retry(attempts=2, base=0.001, total=10))
    with pytest.raises(RemoteError, match=r"gave up after 2 attempts in [\d.]+ s; last: ReadTimeout: timed out$"):
        _ = f.size
    assert server.requests == 2


def test_retry_after_is_waited_for_within_the_deadline(serve):
    answers = iter(["429"])

    def behaviour(handler, method, path, headers):
        if next(answers, None) == "429":
            return handler.send("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
        return ranged(handler, headers)

    server = serve(behaviour)
    f = HttpFile(server.url("a.zip"), retry=Retry(attempts=3, base=0.001, cap=0.01, total=10))
    started = time.monotonic()
    assert f.size == len(BODY)
    assert 1.0 <= time.monotonic() - started < 3  # the second ask came after the second it asked for
    long = serve(
        lambda h, m, p, headers: h.send("HTTP/1.1 503 Busy\r\nRetry-After: 86400\r\nContent-Length: 0\r\n\r\n")
    )
    started = time.monotonic()
    with pytest.raises(RemoteError) as e:
        _ = HttpFile(long.url("a.zip"), retry=Retry(attempts=8, base=0.001, total=60)).size
    assert re.fullmatch(
        re.escape(long.url("a.zip"))
        + r": the last 65,577 bytes: gave up after 1 attempts in 0\.\d s; last: HTTP 503 Busy \(the server asked "
        r"to wait 86400 s\)",
        str(e.value),
    )
    assert time.monotonic() - started < 2 and long.requests == 1  # no wait it cannot finish within its deadline
