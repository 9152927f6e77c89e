"""Reading an archive that is not on local disk: byte ranges of one file over HTTP(S), the Hub, or fsspec.

A *transport* is what `ZipRoot` reads a zip through (see `llava_hf.images.LocalFile` for the local one):

    t.size                      the file's length in bytes
    t.read_at(offset, length)   exactly `length` bytes from `offset` (or an OSError)
    t.read_spans(spans)         the bytes of each (offset, length), in the order given, many requests in flight
    t.identity()                what the cache key holds: URL + ETag / Last-Modified + size
    t.describe()                the URL, for messages

`open_transport(location)` picks one: `HttpFile` for http(s) URLs, `hub_file` (an HttpFile) for `hf://`
URLs (a file of a Hub repo, honouring HF_TOKEN, HF_ENDPOINT and the revision), `FsspecFile` for other
fsspec URLs (`s3://`, `gs://`, `memory://` ...), `LocalFile` for paths. Every failure is a `RemoteError`
(an OSError) whose message names the URL. `RemoteFolderRoot` is the image root of a folder behind a URL.

Threads, not asyncio: measured here (2 cores, 20 ms a request, 16 in flight, 800 ranges of 3 KB), a
pooled `httpx.Client` in 16 threads spent 0.50-0.57 s of CPU where `httpx.AsyncClient` in one thread
spent 0.66-0.81 s, and finished sooner (1.2-1.6 s against 1.9-2.3 s).
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpcore  # httpx's own transport (a dependency of httpx): its sockets get the request deadline
import httpx  # a declared dependency: huggingface_hub 1.x uses it, 0.x (LLaMA-Factory's) and 2.x do not ship it

from .errors import BadImage
from .image_collections import is_url
from .images import HEAD_SIZE, ImageRoot, _check_head, _check_size

# Requests in flight per transport. Far servers are latency-bound: 16 connections at 20-100 ms each keep
# a few hundred small members a second arriving, and CDNs and university servers accept that many.
DEFAULT_CONCURRENCY = 16
# Seconds without a byte (connect, or between reads) before an attempt counts as a timeout.
DEFAULT_TIMEOUT = 30.0
# The first request reads this much of the file's end: the size (Content-Range), the validators and the
# zip end records all come with it. It is what zipdir reads first (the end record, its longest comment,
# the zip64 locator), so opening a zip costs this request and the directory's.
TAIL_BYTES = 22 + 0xFFFF + 20
# Statuses worth another attempt: the server or a proxy is overloaded or restarting.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Statuses that mean the file is not there for us; retrying cannot help.
_GONE_STATUSES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone"}
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CLIENT_LOCK = threading.Lock()  # reading threads start together: one of them makes the client
# Answers refused for what they are, not retried: a retry gets the same answer.
_FINAL_ERRORS = (httpx.TooManyRedirects, httpx.UnsupportedProtocol, httpx.DecodingError)

# -- a deadline for each request as a whole ---------------------------------------------------------------
#
# httpx's timeouts are per read: a server that sends a header line (or an "HTTP/1.1 102 Processing") every
# few seconds never times one out. The client's sockets are wrapped so that every read and write of the
# thread's current request is also bounded by that request's deadline (`_until`): past it, a read raises
# httpcore's ReadTimeout, which httpx reports as its own.

_DEADLINE = threading.local()
# Seconds an attempt started before its span's deadline may still take: it is not cut at its first byte.
_ATTEMPT_FLOOR = 1.0


@contextmanager
def _until(deadline: float) -> Iterator[None]:
    """Bound every socket operation of this thread's requests, inside the block, by `deadline` (monotonic)."""
    _DEADLINE.at = deadline
    try:
        yield
    finally:
        _DEADLINE.at = None


def _remaining(timeout: float | None) -> float | None:
    deadline = getattr(_DEADLINE, "at", None)
    _DEADLINE.cut = False
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    _DEADLINE.cut = timeout is None or left <= timeout  # this operation's timeout is the deadline's
    if left <= 0:
        raise httpcore.ReadTimeout("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


def _deadline_hit() -> bool:
    """Whether the thread's last socket operation was cut by the request's deadline (not its own timeout)."""
    return getattr(_DEADLINE, "cut", False)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _remaining(timeout)))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._backend.connect_tcp(host, port, _remaining(timeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_unix_socket(path, _remaining(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _http_client(concurrency: int, timeout: float) -> httpx.Client:
    """A pooled client whose requests are bounded as a whole inside `_until` (see above)."""
    transport = httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
    pool = getattr(transport, "_pool", None)  # httpx's own pool (httpx 0.20-0.28): its sockets are wrapped
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = _DeadlineBackend(pool._network_backend)
    return httpx.Client(timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=True)


class RemoteError(OSError):
    """A remote file that cannot be read as asked; the message names the URL and what went wrong."""


class RangeNotSupported(RemoteError):
    """The server answered a range request with the whole file (200): reading a member would mean
    downloading the whole archive."""


class RemoteChanged(RemoteError):
    """The file changed (another ETag or Last-Modified) between two requests of one read."""


@dataclass(frozen=True)
class Retry:
    """How often and how long a failed request is retried.

    attempts  requests per span at most (the first included)
    base      seconds before the first retry; doubled after each one, up to `cap`
    cap       the longest wait between two attempts
    total     seconds a span may take, waits included, before it is given up

    The wait is `min(cap, base * 2**n)` scaled by a jitter in [0.5, 1) computed from the span's offset and
    the attempt number: concurrent requests that failed together do not come back together, and the
    schedule is the same on every run (no random state).
    """

    attempts: int = 8
    base: float = 0.25
    cap: float = 8.0
    total: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("base", "cap", "total"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Retry {name} must be a number >= 0, got {value!r}")

    def wait(self, offset: int, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the first retry) of the span at `offset`."""
        jitter = 0.5 + 0.5 * (zlib.crc32(f"{offset}:{attempt}".encode()) / 2**32)
        return min(self.cap, self.base * 2 ** (attempt - 1)) * jitter


def _safe_url(url: str) -> str:
    """`url` without user:password, for messages and cache keys."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class HttpFile:
    """One file on an HTTP(S) server, read by range requests through a pooled `httpx` client.

    The first request (a ranged GET of the last `TAIL_BYTES`) learns the size and the validators (ETag,
    else Last-Modified); the bytes it brought are kept, so a zip's end record costs no second request.
    Later requests carry `If-Range` with that validator, and any answer with another validator is a
    `RemoteChanged` error: a file replaced in the middle of a read never mixes two versions.

    A redirect (the Hub sends each file to its CDN) is followed once and remembered: later requests go to
    where it led, without `headers` (a token never leaves the host it was given for); when that URL stops
    answering (a signed URL expires: 403), the original is asked again.

    Timeouts, 5xx/429 answers, connections reset mid-body and bodies shorter than asked are retried with
    backoff (`retry`) and resumed from the bytes already received, by a new range starting after them. A
    404/403/410 is a `RemoteError` at once; a server that ignores `Range` (200 and the whole body) is a
    `RangeNotSupported` error, and its body is not read. `headers` go with every request (e.g.
    `Authorization`); `concurrency` is the number of requests `read_spans` keeps in flight.

    The client has its own connection pool: huggingface_hub's shared session refuses every URL when
    HF_HUB_OFFLINE is set, which must not stop a mirror or a university server.
    """

    # How ZipRoot merges neighbouring members into one request: gaps up to 1 MiB (a round trip at 20 ms
    # costs more time than a MiB at 50 MB/s), as long as the gaps stay under 5% of the members' bytes.
    merge_policy = (1 << 20, 0.05)

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
    ):
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"HttpFile needs an http:// or https:// URL, got {url!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.url = url
        self.headers = dict(headers or {})
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.retry = retry or Retry()
        self._size: int | None = None
        self._etag: str | None = None
        self._modified: str | None = None
        self._validated = False
        self._target: str | None = None
        self._tail = b""
        self._tail_offset = 0
        self._client: httpx.Client | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._given_up: str | None = None  # why the server is no longer asked (it used up a span's retries)

    # -- the transport interface ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The file's length in bytes (the first access sends the first request)."""
        if self._size is None:
            with self._lock:
                if self._size is None:
                    self._open()
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; a RemoteError when the server cannot give them."""
        size = self.size
        _check_bounds(self.describe(), offset, length, size)
        if length == 0:
            return b""
        if offset >= self._tail_offset:  # inside the tail the first request brought
            start = offset - self._tail_offset
            return self._tail[start : start + length]
        if offset + length > self._tail_offset:  # only the part before the tail is asked for
            head = self._fetch(offset, self._tail_offset - offset)
            return head + self._tail[: offset + length - self._tail_offset]
        return self._fetch(offset, length)

    def read_spans(self, spans: Iterable[tuple[int, int]]) -> Iterator[bytes]:
        """The bytes of each (offset, length), in the order given, with up to `concurrency` requests in
        flight (and no more than twice that many spans held in memory)."""
        _ = self.size  # the first request, before the threads start
        pool = self._pool()
        pending: deque = deque()
        try:
            for offset, length in spans:
                pending.append(pool.submit(self.read_at, offset, length))
                if len(pending) >= 2 * self.concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early (or a span failed): drop the rest
                future.cancel()

    def identity(self) -> str:
        """URL, validator and size: a replaced file gives another identity (and so another cache entry)."""
        size = self.size
        if self._etag:
            validator = f"etag={self._etag}"
        elif self._modified:
            validator = f"last-modified={self._modified}"
        else:
            validator = "no-validator"  # the size alone tells a changed file
        return f"{_safe_url(self.url)} {validator} size={size}"

    def describe(self) -> str:
        return _safe_url(self.url)

    def close(self) -> None:
        """Close the connections (a later read opens new ones)."""
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._client = self._executor = None

    def __getstate__(self):
        # Sent to num_proc workers: connections, threads and locks stay behind; size and validators go.
        state = dict(self.__dict__)
        state.update(_client=None, _executor=None, _pid=0, _lock=None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpFile({self.describe()!r})"

    # -- requests ---------------------------------------------------------------------------------------

    def _session(self) -> httpx.Client:
        # One client per process: a client inherited through fork shares sockets with its parent.
        if self._client is None or self._pid != os.getpid():
            with _CLIENT_LOCK:
                if self._client is None or self._pid != os.getpid():
                    self._new_session()
        return self._client

    def _new_session(self) -> None:
        self._client = _http_client(self.concurrency, self.timeout)
        self._executor = None
        self._pid = os.getpid()

    def _pool(self) -> ThreadPoolExecutor:
        self._session()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llava_hf-fetch")
        return self._executor

    def _open(self) -> None:
        """The first request: the last TAIL_BYTES, which also tell the size and the validators."""
        span = _Span(None, TAIL_BYTES)
        self._request(span)
        self._size = span.total
        self._tail = bytes(span.received)
        self._tail_offset = span.total - len(self._tail)

    def _fetch(self, offset: int, length: int) -> bytes:
        span = _Span(offset, length)
        self._request(span)
        return bytes(span.received)

    def _request(self, span: _Span) -> None:
        """Fill `span.received`, retrying and resuming until it holds the whole range.

        Every attempt, waits included, ends by the span's deadline (`retry.total`), however the server
        trickles its answer. An answer that brought bytes but not all of them (a server capping its
        ranges) is followed at once by the next range; one that brought nothing is retried after a wait.
        Once a span has used up its retries on a server that does not answer (timeouts, refused
        connections, 5xx), the spans after it fail at once, naming that failure: a dead server costs one
        span's retries, not every batch's."""
        if self._given_up is not None:
            raise RemoteError(f"{self.describe()}: {span.label()}: not asked, {self._given_up}")
        started = time.monotonic()
        deadline = started + self.retry.total
        attempt = 0
        while True:
            before = len(span.received)
            server_down, status_error = False, None
            try:
                with _until(max(deadline, time.monotonic() + _ATTEMPT_FLOOR)):
                    again = self._attempt(span, deadline)
                if again and time.monotonic() < deadline:
                    continue  # the answer said what to ask for instead
                if span.offset is not None and len(span.received) >= span.length:
                    del span.received[span.length :]  # never more than asked (the reading stops there too)
                    return
                if len(span.received) > before and time.monotonic() < deadline:
                    continue  # a shorter answer than asked, but an answer: the rest is asked for at once
                problem = f"the body ended after {len(span.received):,} of {span.length:,} bytes"
            except _FINAL_ERRORS as e:  # a redirect loop, a redirect to ftp://: the same again on every try
                raise RemoteError(f"{self.describe()}: {span.label()}: {type(e).__name__}: {e}") from None
            except httpx.TransportError as e:  # timeouts, resets, bodies cut short, refused connections
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if isinstance(e, httpx.TimeoutException) and _deadline_hit():
                    problem = f"no whole answer within {self.retry.total:g} s ({problem})"
                server_down = not isinstance(e, httpx.RemoteProtocolError)
            except _RetryableStatus as e:
                problem = str(e)
                server_down = e.status is not None
                status_error = e
            attempt += 1
            elapsed = time.monotonic() - started
            wait, asked = _next_wait(self.retry, -1 if span.offset is None else span.offset, attempt, status_error)
            if attempt >= self.retry.attempts or elapsed + wait > self.retry.total:
                message = f"gave up after {attempt} attempts in {elapsed:.1f} s; last: {problem}{asked}"
                if server_down:
                    self._given_up = f"since {span.label()} {message}"
                raise RemoteError(f"{self.describe()}: {span.label()}: {message}")
            time.sleep(wait)

    def _attempt(self, span: _Span, deadline: float) -> bool:
        """One GET for what `span` still lacks, appending the body to `span.received`; True when the
        answer is not read but asked again at once (a suffix range answered with other bytes: by offset
        now). Raises httpx errors and _RetryableStatus for what a retry may cure, RemoteError for what it
        cannot."""
        if span.offset is None:
            begin, wanted = None, f"bytes=-{span.length}"
        else:
            begin = span.offset + len(span.received)
            wanted = f"bytes={begin}-{span.offset + span.length - 1}"
        # identity: a range of a gzip-encoded answer would be a range of the compressed bytes
        headers = {"Range": wanted, "Accept-Encoding": "identity"}
        validator = self._etag if self._etag and not self._etag.startswith("W/") else self._modified
        if validator:
            headers["If-Range"] = validator  # a changed file answers 200 (whole body) instead of 206
        url = self._target or self.url
        if url == self.url:
            headers.update(self.headers)  # a token goes to the URL it was given for, never to a CDN
        with self._session().stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status in _RETRY_STATUSES:
                raise _RetryableStatus(f"HTTP {status} {response.reason_phrase}", status, _retry_after(response))
            if url != self.url and status in _GONE_STATUSES:
                # A signed CDN URL expires: ask the original URL again for a fresh one.
                self._target = None
                raise _RetryableStatus(f"HTTP {status} from the URL it redirected to")
            if status in _GONE_STATUSES:
                hint = " (a token may be needed)" if status in (401, 403) else ""
                raise RemoteError(f"{self.describe()}: HTTP {status} {_GONE_STATUSES[status]}{hint}")
            if status == 416:
                raise RemoteError(f"{self.describe()}: HTTP 416 Range Not Satisfiable for {wanted!r}")
            if status == 200:
                # Never read the body: it is the whole file (the COCO zip is 18 GB).
                self._check_validators(response)
                raise RangeNotSupported(
                    f"{self.describe()}: the server ignores range requests (HTTP 200 with the whole file "
                    f"for {wanted!r}); download the file and give its local path instead"
                )
            if status != 206:
                raise RemoteError(f"{self.describe()}: HTTP {status} {response.reason_phrase} for {wanted!r}")
            _check_identity(response, f"{self.describe()}: {wanted!r}")
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if match is None or match.group(3) == "*":
                raise RemoteError(
                    f"{self.describe()}: HTTP 206 without a usable Content-Range "
                    f"({response.headers.get('Content-Range')!r}) for {wanted!r}"
                )
            start, end, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
            if begin is not None and start != begin:
                raise RemoteError(f"{self.describe()}: asked {wanted!r}, the server sent bytes from {start}")
            if begin is None and (end != total - 1 or end - start + 1 != min(span.length, total)):
                # Not the file's last bytes (a prefix, or more): never read on; ask for them by offset instead.
                span.offset = total - min(span.length, total)
                span.length, span.total = total - span.offset, total
                return True
            self._check_validators(response)
            if self._size is not None and total != self._size:
                raise RemoteChanged(
                    f"{self.describe()}: the file changed while being read (was {self._size:,} bytes, now {total:,}); "
                    "run again to read the new version"
                )
            if url == self.url and response.history:
                # Redirected (the Hub sends every file to its CDN): later requests go there directly, which
                # saves a round trip each and keeps hundreds of thousands of requests off the Hub's API.
                self._target = str(response.url)
            if span.offset is None:  # the suffix range: now we know where it starts
                span.offset, span.length, span.total = start, total - start, total
            try:
                for chunk in response.iter_raw():
                    span.received += chunk
                    if len(span.received) >= span.length:
                        break  # all that was asked for: a server sending on past the range is not read to its end
                    if time.monotonic() > deadline:  # a server trickling bytes never times out a read
                        raise self._late(span)
            except httpx.TimeoutException:
                if not _deadline_hit():
                    raise  # the read's own timeout: retried
                raise self._late(span) from None  # the span's deadline, met inside a read
        return False

    def _late(self, span: _Span) -> RemoteError:
        return RemoteError(
            f"{self.describe()}: {span.label()}: not complete after {self.retry.total:g} s "
            f"({len(span.received):,} of {span.length:,} bytes)"
        )

    def _check_validators(self, response) -> None:
        etag = response.headers.get("ETag")
        modified = response.headers.get("Last-Modified")
        if not self._validated:  # the first answer: these are the validators of the version we read
            self._etag, self._modified, self._validated = etag, modified, True
            return
        if (self._etag and etag and etag != self._etag) or (
            not (self._etag and etag) and self._modified and modified and _date(modified) != _date(self._modified)
        ):
            was, now = (self._etag, etag) if self._etag and etag else (self._modified, modified)
            raise RemoteChanged(
                f"{self.describe()}: the file changed while being read (was {was}, now {now}); "
                "run again to read the new version"
            )


def _check_bounds(where: str, offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise RemoteError(f"{where}: bytes {offset}-{offset + length - 1} asked of a file of {size:,} bytes")


class _RetryableStatus(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float = 0.0):
        super().__init__(message)
        self.status = status  # the HTTP status, when the server answered one (5xx, 429): None otherwise
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), 0 if it did not


def _retry_after(response) -> float:
    """The seconds a 429 or 503 asks to wait (Retry-After: seconds, or an HTTP date), 0 when it does not."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return 0.0
    if value.isdigit():
        return float(value)
    when = _date(value)
    return max(0.0, when.timestamp() - time.time()) if hasattr(when, "timestamp") else 0.0


def _next_wait(retry: Retry, key: int, attempt: int, error: Exception | None) -> tuple[float, str]:
    """(seconds before the next attempt, what to add to a message): the backoff, or longer when the
    server asked for longer (Retry-After), which the span's deadline then bounds."""
    wait = retry.wait(key, attempt)
    asked = getattr(error, "retry_after", 0.0)
    if asked > wait:
        return asked, f" (the server asked to wait {asked:g} s)"
    return wait, ""


def _check_identity(response, where: str) -> None:
    """A RemoteError when the server encoded its answer although identity was asked (Accept-Encoding): the
    bytes of a gzip answer are not the file's, and a range of them is nothing."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise RemoteError(
            f"{where}: the server sent {encoding}-encoded bytes though identity (the file's own) was asked"
        )


# A body that ends with the connection (no Content-Length, not chunked) cannot tell a cut from its end: an
# image's own end says it (JPEG's EOI marker, PNG's IEND chunk, GIF's trailer), looked for near the end.
_ENDINGS = ((b"\xff\xd8\xff", b"\xff\xd9"), (b"\x89PNG", b"IEND\xaeB`\x82"), (b"GIF8", b";"))


def _looks_cut(body: bytes) -> bool:
    for head, tail in _ENDINGS:
        if body.startswith(head):
            return tail not in body[-64:]
    return False  # another format: nothing to tell by


class _Span:
    """One range being read: `offset` None until the answer to a suffix range (`bytes=-n`) says where."""

    __slots__ = ("offset", "length", "total", "received")

    def __init__(self, offset: int | None, length: int):
        self.offset = offset
        self.length = length
        self.total = -1
        self.received = bytearray()

    def label(self) -> str:
        if self.offset is None:
            return f"the last {self.length:,} bytes"
        return f"bytes {self.offset}-{self.offset + self.length - 1}"


def _date(value: str):
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return value


# -- the Hub ----------------------------------------------------------------------------------------------


def hub_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "dataset",
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    **options,
) -> HttpFile:
    """A file of a Hub repo (e.g. LLaVA-Pretrain's 27 GB `images.zip`) as an `HttpFile` on its resolve URL.

    The endpoint is `endpoint`, else HF_ENDPOINT as it is now, else huggingface.co; the token is `token`,
    else HF_TOKEN or the stored login (as huggingface_hub finds it); `revision` is a branch, tag or commit
    (default main). The Hub answers with a redirect to its CDN, which serves the ranges; the token goes to
    the Hub only (httpx drops Authorization on a redirect to another host). With HF_HUB_OFFLINE set this is
    a RemoteError: offline means no Hub.

    Why HttpFile and not `HfFileSystem`: one reader for every remote archive, with its retries, resume,
    If-Range checks, requests in flight and exact byte counts; HfFileSystem reads through the shared
    session in read-ahead blocks (megabytes per small member) and needs Hub API calls besides the file.
    """
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url_label = f"hf://{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}/{filename}"
    if _hub_offline():
        raise RemoteError(f"{url_label}: HF_HUB_OFFLINE is set, so the Hub is not asked for this file")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint.rstrip("/"))
    headers = build_hf_headers(token=token)
    return HttpFile(url, headers={**headers, **options.pop("headers", {})}, **options)


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment now is what the user means.
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


_HF_URL = re.compile(
    r"^hf://(?:(?P<type>datasets|spaces|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<path>.*))?$"
)
_REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model", None: "model"}


def parse_hf_url(url: str, folder: bool = False) -> tuple[str, str, str, str | None]:
    """(repo_type, repo_id, path, revision) of `hf://datasets/org/name@rev/path/in/repo` (the fsspec
    form; no type prefix means a model repo, `@rev` is optional and may be URL-quoted, e.g. refs%2Fpr%2F1).
    With `folder`, the path may be empty (the repo's top)."""
    match = _HF_URL.match(url)
    path = (match.group("path") or "").strip("/") if match else ""
    if match is None or not (path or folder):
        what = "folder" if folder else "file"
        tail = "[/<folder>]" if folder else "/<file>"
        raise ValueError(f"{url!r} is not a Hub {what} URL; expected hf://datasets/<org>/<name>[@<revision>]{tail}")
    revision = unquote(match.group("rev")) if match.group("rev") else None
    return _REPO_TYPES[match.group("type")], match.group("repo"), path, revision


# -- fsspec -----------------------------------------------------------------------------------------------


def fsspec_filesystem(url: str, **storage_options):
    """(filesystem, path) of an fsspec URL; a RemoteError naming the package when its backend is missing."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = urlsplit(url).scheme.lower()
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0] or "the fsspec backend"
        raise RemoteError(
            f"{_safe_url(url)}: reading {protocol}:// URLs needs the fsspec backend {package!r} "
            f"(pip install {package}): {e}"
        ) from None
    except ValueError as e:
        raise RemoteError(f"{_safe_url(url)}: fsspec cannot open it: {e}") from None


class FsspecFile:
    """One file behind an fsspec URL (`s3://`, `gs://`, `az://`, `memory://` ...), read with `cat_file` /
    `cat_ranges` (the backend runs the ranges concurrently where it can).

    A backend that is not installed (s3fs, gcsfs, adlfs ...) is a RemoteError saying which package to
    install; every read error is a RemoteError naming the URL. `storage_options` go to the filesystem.
    """

    # Spans handed to one cat_ranges call: enough for the backend's own concurrency, bounded memory.
    BATCH = 64
    merge_policy = HttpFile.merge_policy  # object stores bill and wait per request, like web servers

    def __init__(self, url: str, **storage_options):
        self.url = url
        self._fs, self._path = fsspec_filesystem(url, **storage_options)
        self._info: dict | None = None

    def _stat(self) -> dict:
        if self._info is None:
            try:
                self._info = self._fs.info(self._path)
            except FileNotFoundError:
                raise RemoteError(f"{self.describe()}: no such file") from None
            except OSError as e:
                raise RemoteError(f"{self.describe()}: {e}") from None
            if self._info.get("type") == "directory":
                raise RemoteError(f"{self.describe()}: is a folder, not a file")
        return self._info

    @property
    def size(self) -> int:
        return int(self._stat()["size"])

    def read_at(self, offset: int, length: int) -> bytes:
        size = self.size
        _check_bounds(self.describe(), offset, length, size)
        try:
            data = self._fs.cat_file(self._path, start=offset, end=offset + length)
        except OSError as e:
            raise RemoteError(f"{self.describe()}: bytes {offset}-{offset + length - 1}: {e}") from None
        return self._exact(data, offset, length)

    def read_spans(self, spans: Iterable[tuple[int, int]]) -> Iterator[bytes]:
        spans = list(spans)
        for i in range(0, len(spans), self.BATCH):
            batch = spans[i : i + self.BATCH]
            try:
                results = self._fs.cat_ranges(
                    [self._path] * len(batch), [o for o, _ in batch], [o + n for o, n in batch], on_error="return"
                )
            except OSError as e:
                raise RemoteError(f"{self.describe()}: {e}") from None
            for (offset, length), data in zip(batch, results):
                if isinstance(data, BaseException):
                    raise RemoteError(f"{self.describe()}: bytes {offset}-{offset + length - 1}: {data}")
                yield self._exact(data, offset, length)

    def _exact(self, data: bytes, offset: int, length: int) -> bytes:
        if len(data) != length:
            raise RemoteError(
                f"{self.describe()}: bytes {offset}-{offset + length - 1}: got {len(data):,} bytes, expected {length:,}"
            )
        return bytes(data)

    def identity(self) -> str:
        info = self._stat()
        # Whatever the backend reports that changes with the content: ETag (S3, HTTP), generation / md5
        # (GCS), the modification time otherwise.
        keys = ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified", "mtime", "created")
        validator = " ".join(f"{k}={info[k]}" for k in keys if info.get(k) is not None)
        return f"{_safe_url(self.url)} {validator} size={self.size}".replace("  ", " ")

    def describe(self) -> str:
        return _safe_url(self.url)

    def __repr__(self) -> str:
        return f"FsspecFile({self.describe()!r})"


# -- a folder behind a URL ----------------------------------------------------------------------------------


class RemoteFolderRoot(ImageRoot):
    """Images in a folder behind a URL (`https://host/playground/data`, `s3://bucket/coco/train2017`,
    `hf://datasets/org/name@rev/images`): each image is one GET of `<location>/<name>`, several in flight.

    A file that is not there (404/410, or FileNotFoundError from fsspec) is `missing`, so the train2014
    name rules are tried as for a local folder; one over MAX_IMAGE_BYTES is `too_large` and is not read
    on; one that cannot be fetched after the retries (5xx, resets, short bodies, as for HttpFile) is
    `unreadable`, naming its URL. `token` goes to the Hub only (hf:// locations).
    """

    parallel_reads = True

    def __init__(self, location: str, aliases: tuple[tuple[str, str], ...] = (), token: str | bool | None = None):
        super().__init__(location.rstrip("/"), aliases)
        self.token = token
        self.retry = Retry()
        self._client = None
        self._client_pid = 0
        self._headers: dict[str, str] = {}
        self._fs = None
        self._base = ""
        scheme = location.split("://", 1)[0].lower()
        if scheme == "hf":
            self._hub = parse_hf_url(self.location, folder=True)
            if _hub_offline():
                raise RemoteError(f"{self.location}: HF_HUB_OFFLINE is set, so the Hub is not asked for these files")
        else:
            self._hub = None
        self._http = scheme in ("http", "https", "hf")

    def describe(self, name: str) -> str:
        return _safe_url(f"{self.location}/{name}")

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _read(self, name: str) -> bytes | None:
        data = self._get(name)
        if data is not None:
            where = self.describe(name)
            _check_size(len(data), where)
            _check_head(data[:HEAD_SIZE], len(data), where)
        return data

    def _probe(self, name: str) -> tuple[bytes, int] | None:
        data = self._get(name)  # one request either way: the whole (small) file
        return None if data is None else (data[:HEAD_SIZE], len(data))

    def _get(self, name: str) -> bytes | None:
        try:
            return self._get_http(name) if self._http else self._get_fsspec(name)
        except RemoteError as e:
            raise BadImage("unreadable", str(e)) from None

    def _file_url(self, name: str) -> str:
        if self._hub is None:
            return f"{self.location}/{quote(name)}"
        from huggingface_hub import constants, hf_hub_url

        repo_type, repo_id, folder, revision = self._hub
        endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        path = f"{folder}/{name}" if folder else name
        return hf_hub_url(repo_id, path, repo_type=repo_type, revision=revision, endpoint=endpoint)

    def _session(self):
        if self._client is None or self._client_pid != os.getpid():
            with _CLIENT_LOCK:
                if self._client is None or self._client_pid != os.getpid():
                    self._new_session()
        return self._client

    def _new_session(self) -> None:
        if self._hub is not None:
            from huggingface_hub.utils import build_hf_headers

            self._headers = build_hf_headers(token=self.token)
        self._client = _http_client(DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT)
        self._client_pid = os.getpid()

    def _get_http(self, name: str) -> bytes | None:
        url = self._file_url(name)
        where = self.describe(name)
        started, attempt = time.monotonic(), 0
        while True:
            status_error = None
            try:
                with (
                    _until(max(started + self.retry.total, time.monotonic() + _ATTEMPT_FLOOR)),
                    self._session().stream(
                        "GET", url, headers={**self._headers, "Accept-Encoding": "identity"}
                    ) as response,
                ):
                    status = response.status_code
                    if status in (404, 410):
                        return None
                    if status in _RETRY_STATUSES:
                        raise _RetryableStatus(
                            f"HTTP {status} {response.reason_phrase}", status, _retry_after(response)
                        )
                    if status != 200:
                        raise RemoteError(f"{where}: HTTP {status} {response.reason_phrase}")
                    _check_identity(response, where)
                    declared = response.headers.get("Content-Length")
                    if declared is not None and declared.isdigit():
                        _check_size(int(declared), where)  # refused before a byte of the body is read
                    body = bytearray()
                    for chunk in response.iter_raw():
                        body += chunk
                        _check_size(len(body), where)
                    if declared is not None and declared.isdigit():
                        if len(body) == int(declared):
                            return bytes(body)
                        problem = f"the body ended after {len(body):,} of {int(declared):,} bytes"
                    elif "chunked" in response.headers.get("Transfer-Encoding", "").lower() or not _looks_cut(body):
                        return bytes(body)  # chunked: h11 refuses a cut one; else the image ends as images end
                    else:
                        problem = (
                            f"the body ended with the connection after {len(body):,} bytes, before the image's "
                            "end (no Content-Length to check it by)"
                        )
            except _FINAL_ERRORS as e:
                raise RemoteError(f"{where}: {type(e).__name__}: {e}") from None
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except _RetryableStatus as e:
                problem = str(e)
                status_error = e
            attempt += 1
            elapsed = time.monotonic() - started
            wait, asked = _next_wait(self.retry, zlib.crc32(name.encode()), attempt, status_error)
            if attempt >= self.retry.attempts or elapsed + wait > self.retry.total:
                raise RemoteError(
                    f"{where}: gave up after {attempt} attempts in {elapsed:.1f} s; last: {problem}{asked}"
                )
            time.sleep(wait)

    def _get_fsspec(self, name: str) -> bytes | None:
        if self._fs is None:
            self._fs, self._base = fsspec_filesystem(self.location)
        path = f"{self._base.rstrip('/')}/{name}"
        try:
            size = self._fs.size(path)
            if size is not None:
                _check_size(size, self.describe(name))
            return bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RemoteError(f"{self.describe(name)}: {e}") from None

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_client=None, _client_pid=0, _fs=None, _base="")
        return state


def open_remote_root(location: str, aliases: tuple[tuple[str, str], ...] = (), token: str | bool | None = None):
    """The image root behind a URL: a `.zip` (the URL's path ends so) is a `ZipRoot` read through
    `open_transport`, anything else a `RemoteFolderRoot`."""
    from .images import ZipRoot

    if urlsplit(location).path.lower().endswith(".zip"):
        return ZipRoot(location, aliases, transport=open_transport(location, token=token))
    return RemoteFolderRoot(location, aliases, token=token)


# -- choosing one ------------------------------------------------------------------------------------------


def open_transport(location: str, token: str | bool | None = None, **options):
    """The transport for `location`: `HttpFile` (http/https), `hub_file` (hf://, with `token`),
    `FsspecFile` (any other fsspec URL) or `llava_hf.images.LocalFile` (a path).

    `token` goes to the Hub only, never to another host. `options` go to HttpFile (concurrency, timeout,
    retry, headers) or to the fsspec filesystem. Nothing is requested until the transport is first read.
    """
    if not is_url(location):
        from .images import LocalFile

        return LocalFile(os.path.abspath(os.path.expanduser(location)))
    scheme = location.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return HttpFile(location, **options)
    if scheme == "hf":
        repo_type, repo_id, filename, revision = parse_hf_url(location)
        return hub_file(repo_id, filename, repo_type=repo_type, revision=revision, token=token, **options)
    return FsspecFile(location, **options)


__all__ = [
    "DEFAULT_CONCURRENCY",
    "FsspecFile",
    "HttpFile",
    "RangeNotSupported",
    "RemoteChanged",
    "RemoteError",
    "RemoteFolderRoot",
    "Retry",
    "hub_file",
    "open_remote_root",
    "is_url",
    "open_transport",
    "parse_hf_url",
]
