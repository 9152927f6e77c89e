"""Remote transports (llava_hf.remote) against tests/httpserver.py on 127.0.0.1: exact bytes, requests and
bytes counted, faults retried and resumed, each error's message."""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile

import pytest
from conftest import jpeg, sha256

from llava_hf.errors import BadImage
from llava_hf.images import ZipRoot, open_root
from llava_hf.remote import (
    FsspecFile,
    HttpFile,
    RangeNotSupported,
    RemoteChanged,
    RemoteError,
    RemoteFolderRoot,
    Retry,
    hub_file,
    open_transport,
    parse_hf_url,
)

FAST = Retry(attempts=8, base=0.001, cap=0.01, total=30.0)
PAYLOAD_SIZE = 1_000_000


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "blob.bin").write_bytes(random.Random(7).randbytes(PAYLOAD_SIZE))
    return root


@pytest.fixture
def payload(folder) -> bytes:
    return (folder / "blob.bin").read_bytes()


def spans_of(count: int, step: int = 6000, length: int = 4000) -> list[tuple[int, int]]:
    return [(i * step, length) for i in range(count)]


def ranges(server) -> list[str | None]:
    return [hit.range for hit in server.log]


# -- reading -------------------------------------------------------------------------------------------


def test_first_request_learns_size_and_validators_and_brings_the_tail(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"))
    assert f.size == PAYLOAD_SIZE
    assert ranges(server) == ["bytes=-65577"]
    # The end record of a zip is in the tail: reading it costs no second request.
    assert f.read_at(PAYLOAD_SIZE - 22, 22) == payload[-22:]
    assert f.read_at(PAYLOAD_SIZE - 65577, 100) == payload[-65577:-65477]
    assert server.requests == 1
    st = os.stat(folder / "blob.bin")
    assert f.identity() == f'{server.url("blob.bin")} etag="{st.st_size:x}-{st.st_mtime_ns:x}" size={PAYLOAD_SIZE}'
    assert f.describe() == server.url("blob.bin")


def test_read_at_and_read_spans_give_exact_bytes_one_request_each(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"), concurrency=4)
    assert f.read_at(1000, 5000) == payload[1000:6000]
    spans = spans_of(100)
    server.reset_stats()
    got = list(f.read_spans(spans))
    assert got == [payload[o : o + n] for o, n in spans]
    assert server.requests == 100
    assert server.bytes_sent == 100 * 4000
    assert sorted(ranges(server)) == sorted(f"bytes={o}-{o + n - 1}" for o, n in spans)
    # Every request after the first carries If-Range with the ETag the first one saw.
    etag = f.identity().split("etag=")[1].split(" ")[0]
    assert {hit.headers["if-range"] for hit in server.log} == {etag}


def test_read_spans_keeps_the_order_given_with_many_in_flight(serve, folder, payload):
    server = serve(folder, latency=0.002)
    f = HttpFile(server.url("blob.bin"), concurrency=8)
    spans = list(reversed(spans_of(60, step=15000, length=3333)))
    assert list(f.read_spans(spans)) == [payload[o : o + n] for o, n in spans]


def test_a_read_overlapping_the_tail_asks_only_for_the_part_before_it(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"))
    tail = PAYLOAD_SIZE - 65577
    assert f.read_at(tail - 41, 100) == payload[tail - 41 : tail + 59]
    assert ranges(server) == ["bytes=-65577", f"bytes={tail - 41}-{tail - 1}"]


def test_a_file_smaller_than_the_tail(serve, folder):
    (folder / "small.bin").write_bytes(b"0123456789")
    server = serve(folder)
    f = HttpFile(server.url("small.bin"))
    assert f.size == 10
    assert f.read_at(3, 4) == b"3456"
    assert list(f.read_spans([(0, 2), (8, 2)])) == [b"01", b"89"]
    assert server.requests == 1


def test_reading_past_the_end_names_the_url(serve, folder):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"))
    with pytest.raises(RemoteError) as e:
        f.read_at(PAYLOAD_SIZE - 10, 20)
    assert str(e.value) == f"{server.url('blob.bin')}: bytes 999990-1000009 asked of a file of 1,000,000 bytes"


def test_pickled_transport_reads_in_the_new_process_without_a_new_first_request(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"))
    assert f.size == PAYLOAD_SIZE
    copy = pickle.loads(pickle.dumps(f))
    assert copy.size == PAYLOAD_SIZE
    assert copy.read_at(500, 10) == payload[500:510]
    assert ranges(server) == ["bytes=-65577", "bytes=500-509"]


def test_credentials_in_the_url_stay_out_of_messages_and_identity(serve, folder):
    server = serve(folder)
    url = server.url("blob.bin").replace("http://", "http://user:secret@")
    f = HttpFile(url)
    assert f.describe() == server.url("blob.bin")
    assert "secret" not in f.identity()
    assert f.headers == {}


def test_a_redirect_is_followed_once_and_the_token_stays_with_the_original_host(serve, folder, tmp_path, payload):
    import shutil

    cdn_root = tmp_path / "cdn"
    (cdn_root / "a").mkdir(parents=True)
    (cdn_root / "b").mkdir()
    shutil.copy2(folder / "blob.bin", cdn_root / "a" / "blob.bin")
    shutil.copy2(folder / "blob.bin", cdn_root / "b" / "blob.bin")  # same size and mtime: same ETag
    cdn = serve(cdn_root)  # another port: another origin, as the Hub and its CDN are
    hub = serve(folder, redirects={"resolve/blob.bin": cdn.url("a/blob.bin")})
    f = HttpFile(hub.url("resolve/blob.bin"), headers={"Authorization": "Bearer hf_x"}, retry=FAST)
    assert list(f.read_spans([(0, 10), (5000, 10)])) == [payload[:10], payload[5000:5010]]
    assert [(hit.path, hit.status, hit.headers.get("authorization")) for hit in hub.log] == [
        ("resolve/blob.bin", 302, "Bearer hf_x")
    ]
    assert [(hit.path, hit.status, hit.headers.get("authorization")) for hit in cdn.log] == [
        ("a/blob.bin", 206, None)
    ] * 3
    # The signed URL expired: the original is asked again and leads elsewhere.
    cdn.configure(status={"a/blob.bin": 403})
    hub.configure(redirects={"resolve/blob.bin": cdn.url("b/blob.bin")})
    hub.reset_stats()
    cdn.reset_stats()
    assert f.read_at(9000, 10) == payload[9000:9010]
    assert [(hit.path, hit.status) for hit in hub.log] == [("resolve/blob.bin", 302)]
    assert [(hit.path, hit.status) for hit in cdn.log] == [("a/blob.bin", 403), ("b/blob.bin", 206)]
    assert f.describe() == hub.url("resolve/blob.bin")


# -- faults --------------------------------------------------------------------------------------------


def test_twenty_percent_of_requests_failing_still_gives_exact_bytes(serve, folder, payload):
    server = serve(folder, fault_rate=0.2, faults=("503", "reset", "short"), seed=3)
    f = HttpFile(server.url("blob.bin"), concurrency=8, retry=FAST)
    spans = spans_of(150)
    assert list(f.read_spans(spans)) == [payload[o : o + n] for o, n in spans]
    faults = [hit.fault for hit in server.log if hit.fault]
    assert {"503", "reset", "short"} <= set(faults)
    assert 0.1 < len(faults) / server.requests < 0.3
    # Each failed request cost exactly one more request, and resumed requests asked only for what had not
    # arrived: every byte once, plus the 503 pages, plus at most what a reset dropped before it was read.
    assert server.requests == 1 + 150 + len(faults)
    floor = 65577 + 150 * 4000 + len("503\n") * faults.count("503")
    assert floor <= server.bytes_sent <= floor + sum(hit.sent for hit in server.log if hit.fault == "reset")


def test_a_reset_mid_body_is_resumed_after_the_bytes_received(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"), retry=FAST)
    assert f.size == PAYLOAD_SIZE
    server.configure(script=["reset"])
    assert f.read_at(10_000, 8_000) == payload[10_000:18_000]
    # Half the body was sent before the reset: the retry asks only for what had not arrived (a reset may
    # also drop bytes the client had not read yet, so the retry starts at or before the half).
    first, retry = ranges(server)[1:]
    assert first == "bytes=10000-17999"
    start = int(retry.removeprefix("bytes=").split("-")[0])
    assert 10_000 < start <= 14_000
    assert retry == f"bytes={start}-17999"
    assert [hit.fault for hit in server.log[1:]] == ["reset", None]


def test_a_short_body_is_resumed(serve, folder, payload):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"), retry=FAST)
    assert f.size == PAYLOAD_SIZE
    server.configure(script=["short", "short"])
    assert f.read_at(0, 8_000) == payload[:8_000]
    assert ranges(server)[1:] == ["bytes=0-7999", "bytes=4000-7999", "bytes=6000-7999"]


def test_a_reset_during_the_first_request_is_resumed_too(serve, folder, payload):
    server = serve(folder, script=["reset"])
    f = HttpFile(server.url("blob.bin"), retry=FAST)
    assert f.size == PAYLOAD_SIZE
    first, retry = ranges(server)
    assert first == "bytes=-65577"
    start = int(retry.removeprefix("bytes=").split("-")[0])
    assert PAYLOAD_SIZE - 65577 < start <= PAYLOAD_SIZE - 65577 + 65577 // 2
    assert retry == f"bytes={start}-{PAYLOAD_SIZE - 1}"
    assert f.read_at(PAYLOAD_SIZE - 65577, 65577) == payload[-65577:]
    assert server.requests == 2


def test_a_stalled_body_times_out_and_is_retried(serve, folder, payload):
    server = serve(folder, stall=2.5)
    f = HttpFile(server.url("blob.bin"), timeout=0.6, retry=FAST)
    assert f.size == PAYLOAD_SIZE
    server.configure(script=["stall"])
    assert f.read_at(100, 1000) == payload[100:1100]
    assert [hit.fault for hit in server.log[1:]] == ["stall", None]


def test_a_trickling_body_is_stopped_at_the_total_time(serve, folder):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"), retry=Retry(attempts=3, base=0.001, total=0.5))
    assert f.size == PAYLOAD_SIZE
    server.configure(bandwidth=200_000)  # 64 KiB every 0.33 s: each read succeeds, the whole never ends
    with pytest.raises(RemoteError) as e:
        f.read_at(0, 200_000)
    assert re.fullmatch(
        re.escape(server.url("blob.bin")) + r": bytes 0-199999: not complete after 0.5 s \([\d,]+ of 200,000 bytes\)",
        str(e.value),
    )
    assert server.requests == 2


def test_retries_are_bounded_and_the_error_says_what_happened(serve, folder):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"), retry=Retry(attempts=3, base=0.001, cap=0.001))
    assert f.size == PAYLOAD_SIZE
    server.configure(fault_rate=1.0, faults=("503",))
    with pytest.raises(RemoteError) as e:
        f.read_at(0, 100)
    message = re.sub(r"in \d+\.\d s", "in T s", str(e.value))
    assert (
        message
        == f"{server.url('blob.bin')}: bytes 0-99: gave up after 3 attempts in T s; last: HTTP 503 Service Unavailable"
    )
    assert server.requests == 1 + 3


def test_retries_stop_at_the_total_time(serve, folder):
    server = serve(folder, fault_rate=1.0, faults=("503",))
    f = HttpFile(server.url("blob.bin"), retry=Retry(attempts=1000, base=0.02, cap=0.02, total=0.3))
    with pytest.raises(RemoteError) as e:
        _ = f.size
    attempts = int(re.search(r"gave up after (\d+) attempts", str(e.value)).group(1))
    # The time bound stopped it long before the 1000 attempts allowed.
    assert attempts == server.requests < 1000


def test_backoff_schedule_is_exponential_capped_and_the_same_every_run():
    retry = Retry(base=0.25, cap=8.0)
    waits = [retry.wait(4096, n) for n in range(1, 9)]
    assert waits == [Retry(base=0.25, cap=8.0).wait(4096, n) for n in range(1, 9)]
    for n, wait in enumerate(waits, start=1):
        assert 0.5 * min(8.0, 0.25 * 2 ** (n - 1)) <= wait < min(8.0, 0.25 * 2 ** (n - 1))
    # Spans that failed together come back at different times.
    assert retry.wait(0, 1) != retry.wait(4096, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "Retry attempts must be an int >= 1, got 0"),
        ({"base": -1}, "Retry base must be a number >= 0, got -1"),
        ({"total": "5"}, "Retry total must be a number >= 0, got '5'"),
    ],
)
def test_retry_refuses_bad_values(options, message):
    with pytest.raises(ValueError) as e:
        Retry(**options)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("ftp://host/a.zip", {}, "HttpFile needs an http:// or https:// URL, got 'ftp://host/a.zip'"),
        ("http://127.0.0.1/a.zip", {"concurrency": 0}, "concurrency must be an int >= 1, got 0"),
        ("http://127.0.0.1/a.zip", {"timeout": 0}, "timeout must be a number of seconds > 0, got 0"),
    ],
)
def test_http_file_refuses_bad_values(url, options, message):
    with pytest.raises(ValueError) as e:
        HttpFile(url, **options)
    assert str(e.value) == message


# -- errors that no retry cures ------------------------------------------------------------------------


def test_a_server_ignoring_range_is_an_error_and_the_body_is_not_read(serve, folder):
    with open(folder / "huge.zip", "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros
    server = serve(folder, ignore_range=True)
    f = HttpFile(server.url("huge.zip"))
    with pytest.raises(RangeNotSupported) as e:
        _ = f.size
    assert str(e.value) == (
        f"{server.url('huge.zip')}: the server ignores range requests (HTTP 200 with the whole file for "
        "'bytes=-65577'); download the file and give its local path instead"
    )
    assert isinstance(e.value, OSError)
    assert server.requests == 1
    assert server.log[0].status == 200
    # The client closed the connection: only what the socket buffers took was sent, not 64 MiB.
    assert server.bytes_sent < (32 << 20)


@pytest.mark.parametrize(
    ("status", "text"),
    [(404, "HTTP 404 Not Found"), (410, "HTTP 410 Gone"), (403, "HTTP 403 Forbidden (a token may be needed)")],
)
def test_a_missing_or_forbidden_file_is_an_error_at_once(serve, folder, status, text):
    server = serve(folder, status={"blob.bin": status})
    f = HttpFile(server.url("blob.bin"), retry=FAST)
    with pytest.raises(RemoteError) as e:
        _ = f.size
    assert str(e.value) == f"{server.url('blob.bin')}: {text}"
    assert server.requests == 1


def test_a_file_that_is_not_there_is_404(serve, folder):
    server = serve(folder)
    with pytest.raises(RemoteError) as e:
        _ = HttpFile(server.url("nothing.zip")).size
    assert str(e.value) == f"{server.url('nothing.zip')}: HTTP 404 Not Found"


def test_a_file_replaced_between_requests_is_an_error(serve, folder):
    server = serve(folder)
    f = HttpFile(server.url("blob.bin"))
    assert f.size == PAYLOAD_SIZE
    old = f.identity()
    (folder / "blob.bin").write_bytes(b"x" * 2_000_000)
    st = os.stat(folder / "blob.bin")
    with pytest.raises(RemoteChanged) as e:
        f.read_at(0, 100)
    assert str(e.value) == (
        f"{server.url('blob.bin')}: the file changed while being read (was {old.split('etag=')[1].split(' ')[0]}, "
        f'now "{st.st_size:x}-{st.st_mtime_ns:x}"); run again to read the new version'
    )
    # If-Range made the server send the new file whole; the client read none of it.
    assert server.log[-1].status == 200
    assert HttpFile(server.url("blob.bin")).identity() != old


def test_a_file_of_another_size_without_validators_is_an_error(serve, folder, payload):
    server = serve(folder, validators=False)
    f = HttpFile(server.url("blob.bin"))
    assert f.size == PAYLOAD_SIZE
    assert f.identity() == f"{server.url('blob.bin')} no-validator size=1000000"
    (folder / "blob.bin").write_bytes(payload + b"more")
    with pytest.raises(RemoteChanged) as e:
        f.read_at(0, 10)
    assert str(e.value) == (
        f"{server.url('blob.bin')}: the file changed while being read (was 1,000,000 bytes, now 1,000,004); "
        "run again to read the new version"
    )


def test_a_refused_connection_is_retried_then_reported(folder):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = HttpFile(f"http://127.0.0.1:{port}/a.zip", retry=Retry(attempts=2, base=0.001))
    with pytest.raises(
        RemoteError,
        match=rf"^http://127.0.0.1:{port}/a.zip: the last 65,577 bytes: gave up after 2 attempts .*; last: ConnectError",
    ):
        _ = f.size


# -- the Hub -------------------------------------------------------------------------------------------


def test_hub_file_honours_endpoint_token_and_revision(serve, folder, payload, monkeypatch):
    repo = folder / "datasets" / "liuhaotian" / "LLaVA-Pretrain" / "resolve" / "v1.0"
    repo.mkdir(parents=True)
    (repo / "images.zip").write_bytes(payload)
    server = serve(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", server.url().rstrip("/"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    f = open_transport("hf://datasets/liuhaotian/LLaVA-Pretrain@v1.0/images.zip")
    assert isinstance(f, HttpFile)
    assert f.url == server.url("datasets/liuhaotian/LLaVA-Pretrain/resolve/v1.0/images.zip")
    assert f.read_at(123, 456) == payload[123:579]
    assert [hit.headers["authorization"] for hit in server.log] == ["Bearer hf_test_token"] * 2
    # An explicit token wins over HF_TOKEN.
    g = hub_file("liuhaotian/LLaVA-Pretrain", "images.zip", revision="v1.0", token="hf_other")
    assert g.size == PAYLOAD_SIZE
    assert server.log[-1].headers["authorization"] == "Bearer hf_other"


def test_hub_file_refuses_when_the_hub_is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RemoteError) as e:
        open_transport("hf://datasets/liuhaotian/LLaVA-Pretrain/images.zip")
    assert str(e.value) == (
        "hf://datasets/liuhaotian/LLaVA-Pretrain/images.zip: HF_HUB_OFFLINE is set, so the Hub is not asked for this file"
    )


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "hf://datasets/liuhaotian/LLaVA-Pretrain/images.zip",
            ("dataset", "liuhaotian/LLaVA-Pretrain", "images.zip", None),
        ),
        ("hf://datasets/org/name@refs%2Fpr%2F1/a/b.zip", ("dataset", "org/name", "a/b.zip", "refs/pr/1")),
        ("hf://org/model@main/w.zip", ("model", "org/model", "w.zip", "main")),
    ],
)
def test_parse_hf_url(url, parsed):
    assert parse_hf_url(url) == parsed


def test_parse_hf_url_refuses_a_repo_without_file():
    with pytest.raises(ValueError) as e:
        parse_hf_url("hf://datasets/org")
    assert (
        str(e.value)
        == "'hf://datasets/org' is not a Hub file URL; expected hf://datasets/<org>/<name>[@<revision>]/<file>"
    )


# -- fsspec --------------------------------------------------------------------------------------------


@pytest.fixture
def memory_file(payload):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/llava_hf_test/blob.bin", payload)
    yield "memory://llava_hf_test/blob.bin"
    fs.rm("/llava_hf_test", recursive=True)


def test_fsspec_file_reads_exact_bytes(memory_file, payload):
    f = open_transport(memory_file)
    assert isinstance(f, FsspecFile)
    assert f.size == PAYLOAD_SIZE
    assert f.read_at(10, 20) == payload[10:30]
    spans = spans_of(150)  # more than one cat_ranges batch
    assert list(f.read_spans(spans)) == [payload[o : o + n] for o, n in spans]
    assert f.identity().startswith(f"{memory_file} ")
    assert f.identity().endswith(f" size={PAYLOAD_SIZE}")
    assert f.describe() == memory_file


def test_fsspec_file_that_is_not_there(memory_file):
    f = FsspecFile("memory://llava_hf_test/none.zip")
    with pytest.raises(RemoteError) as e:
        _ = f.size
    assert str(e.value) == "memory://llava_hf_test/none.zip: no such file"


def test_fsspec_read_past_the_end(memory_file):
    with pytest.raises(RemoteError) as e:
        FsspecFile(memory_file).read_at(PAYLOAD_SIZE - 1, 2)
    assert str(e.value) == f"{memory_file}: bytes 999999-1000000 asked of a file of 1,000,000 bytes"


@pytest.mark.parametrize(
    ("url", "package"), [("s3://bucket/train2017.zip", "s3fs"), ("gs://bucket/train2017.zip", "gcsfs")]
)
def test_a_missing_fsspec_backend_names_the_package(url, package):
    pytest.importorskip("fsspec")
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    with pytest.raises(RemoteError) as e:
        open_transport(url)
    scheme = url.split(":")[0]
    assert str(e.value).startswith(
        f"{url}: reading {scheme}:// URLs needs the fsspec backend '{package}' (pip install {package}): "
    )


def test_open_transport_sends_no_token_to_other_hosts(serve, folder):
    server = serve(folder)
    f = open_transport(server.url("blob.bin"), token="hf_secret")
    assert isinstance(f, HttpFile)
    assert f.size == PAYLOAD_SIZE
    assert "authorization" not in server.log[0].headers


# -- a folder behind a URL -----------------------------------------------------------------------------

FOLDER_NAMES = [f"{i:012d}.jpg" for i in range(1, 41)]
TRAIN2014 = ((r"^(\d{12}\.jpg)$", r"COCO_train2014_\1"),)


@pytest.fixture
def image_folder(tmp_path):
    """40 fake JPEGs under coco/train2017/, and 5 of them again under their train2014 names in coco/train2014/."""
    root = tmp_path / "playground"
    (root / "coco" / "train2017").mkdir(parents=True)
    (root / "coco" / "train2014").mkdir(parents=True)
    images = {name: jpeg(seed) for seed, name in enumerate(FOLDER_NAMES)}
    for name, data in images.items():
        (root / "coco" / "train2017" / name).write_bytes(data)
    for name in FOLDER_NAMES[:5]:
        (root / "coco" / "train2014" / f"COCO_train2014_{name}").write_bytes(images[name])
    return root, images


def results_of(root, names):
    out = []
    for result in root.read_many(names):
        out.append(result if isinstance(result, BadImage) else (result[0], sha256(result[1])))
    return out


def test_an_http_folder_gives_exact_bytes_and_names_what_is_missing(serve, image_folder):
    root, images = image_folder
    server = serve(root)
    folder = RemoteFolderRoot(server.url("coco/train2017"))
    names = random.Random(2).sample(FOLDER_NAMES, 20) + ["000000999999.jpg"]
    got = results_of(folder, names)
    assert got[:20] == [(name, sha256(images[name])) for name in names[:20]]
    assert isinstance(got[20], BadImage) and got[20].reason == "missing"
    assert str(got[20]) == f"image '000000999999.jpg' not found under {server.url('coco/train2017')}"
    assert server.requests == 21
    assert server.bytes_sent == sum(len(images[n]) for n in names[:20]) + len("404\n")
    assert folder.url("a/b.jpg") == server.url("coco/train2017/a/b.jpg")


def test_an_http_folder_of_train2014_names(serve, image_folder):
    root, images = image_folder
    server = serve(root)
    folder = RemoteFolderRoot(server.url("coco/train2014/"), TRAIN2014)
    got = results_of(folder, FOLDER_NAMES[:5])
    assert got == [(f"COCO_train2014_{name}", sha256(images[name])) for name in FOLDER_NAMES[:5]]


def test_an_http_folder_with_faults_still_gives_exact_bytes(serve, image_folder):
    root, images = image_folder
    server = serve(root, fault_rate=0.2, faults=("503", "reset", "short"), seed=11)
    folder = RemoteFolderRoot(server.url("coco/train2017"))
    folder.retry = FAST
    got = results_of(folder, FOLDER_NAMES)
    assert got == [(name, sha256(images[name])) for name in FOLDER_NAMES]
    faults = [hit.fault for hit in server.log if hit.fault]
    assert {"503", "reset", "short"} <= set(faults)
    assert server.requests == 40 + len(faults)


def test_an_http_folder_refuses_a_too_large_file_before_reading_it(serve, image_folder, monkeypatch):
    import llava_hf.images

    root, images = image_folder
    server = serve(root)
    monkeypatch.setattr(llava_hf.images, "MAX_IMAGE_BYTES", 100)
    got = next(RemoteFolderRoot(server.url("coco/train2017")).read_many([FOLDER_NAMES[0]]))
    assert isinstance(got, BadImage) and got.reason == "too_large"
    size = len(images[FOLDER_NAMES[0]])
    assert (
        str(got)
        == f"image file {server.url('coco/train2017/' + FOLDER_NAMES[0])} has {size:,} bytes, more than the 100 allowed"
    )


def test_an_http_folder_that_keeps_failing_is_unreadable_naming_the_url(serve, image_folder):
    root, _ = image_folder
    server = serve(root, status={"coco/train2017/" + FOLDER_NAMES[0]: 503})
    folder = RemoteFolderRoot(server.url("coco/train2017"))
    folder.retry = Retry(attempts=2, base=0.001)
    got = next(folder.read_many([FOLDER_NAMES[0]]))
    assert isinstance(got, BadImage) and got.reason == "unreadable"
    message = re.sub(r"in \d+\.\d s", "in T s", str(got))
    assert (
        message
        == f"{server.url('coco/train2017/' + FOLDER_NAMES[0])}: gave up after 2 attempts in T s; last: HTTP 503 Service Unavailable"
    )


def test_a_hub_folder(serve, image_folder, monkeypatch):
    root, images = image_folder
    hub = root.parent / "hub"
    (hub / "datasets" / "org" / "playground" / "resolve" / "main").mkdir(parents=True)
    (hub / "datasets" / "org" / "playground" / "resolve" / "main" / "train2017").symlink_to(root / "coco" / "train2017")
    server = serve(hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", server.url().rstrip("/"))
    folder = RemoteFolderRoot("hf://datasets/org/playground/train2017", token="hf_folder")
    assert results_of(folder, FOLDER_NAMES[:3]) == [(n, sha256(images[n])) for n in FOLDER_NAMES[:3]]
    assert sorted(hit.path for hit in server.log) == [
        f"datasets/org/playground/resolve/main/train2017/{n}" for n in FOLDER_NAMES[:3]
    ]
    assert {hit.headers["authorization"] for hit in server.log} == {"Bearer hf_folder"}


def test_an_fsspec_folder(image_folder):
    import fsspec

    root, images = image_folder
    fs = fsspec.filesystem("memory")
    for name in FOLDER_NAMES[:6]:
        fs.pipe(f"/llava_hf_folder/train2017/{name}", images[name])
    try:
        folder = RemoteFolderRoot("memory://llava_hf_folder/train2017")
        got = results_of(folder, [*FOLDER_NAMES[:6], FOLDER_NAMES[10]])
        assert got[:6] == [(n, sha256(images[n])) for n in FOLDER_NAMES[:6]]
        assert got[6].reason == "missing"
        assert str(got[6]) == f"image '{FOLDER_NAMES[10]}' not found under memory://llava_hf_folder/train2017"
    finally:
        fs.rm("/llava_hf_folder", recursive=True)


def test_a_remote_folder_pickles_without_its_connections(serve, image_folder):
    root, images = image_folder
    server = serve(root)
    folder = RemoteFolderRoot(server.url("coco/train2017"))
    assert results_of(folder, FOLDER_NAMES[:1]) == [(FOLDER_NAMES[0], sha256(images[FOLDER_NAMES[0]]))]
    copy = pickle.loads(pickle.dumps(folder))
    assert results_of(copy, FOLDER_NAMES[1:2]) == [(FOLDER_NAMES[1], sha256(images[FOLDER_NAMES[1]]))]


# -- zips over HTTP: ZipRoot through a remote transport ----------------------------------------------------

ZIP_NAMES = [f"{i:012d}.jpg" for i in range(1, 161)]


def _write_zip(path, images: dict[str, bytes], method: int, prefix: str = "") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in images.items():
            zf.writestr(zipfile.ZipInfo(prefix + name, date_time=(2023, 4, 17, 0, 0, 0)), data, compress_type=method)


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    """The same 160 fake JPEGs as four zips: stored, deflated, under a top folder `train2017/`, and zip64."""
    root = tmp_path_factory.mktemp("zips")
    images = {name: jpeg(seed) for seed, name in enumerate(ZIP_NAMES)}
    _write_zip(root / "stored.zip", images, zipfile.ZIP_STORED)
    _write_zip(root / "deflated.zip", images, zipfile.ZIP_DEFLATED)
    _write_zip(root / "folder.zip", images, zipfile.ZIP_STORED, prefix="train2017/")
    # zipfile writes the zip64 end records once a zip has more members than this limit: lowering it gives
    # a real zip64 archive (zip64 end record and locator; 0xFFFF counts in the plain end record).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 100)
        _write_zip(root / "zip64.zip", images, zipfile.ZIP_STORED)
    assert (root / "zip64.zip").read_bytes().count(b"PK\x06\x06") == 1
    return root, images


def referenced(count: int = 60, seed: int = 5) -> list[str]:
    """A seeded random subset of the members, in random order (as a JSON file names them)."""
    return random.Random(seed).sample(ZIP_NAMES, count)


def digests(results) -> list:
    return [r if isinstance(r, BadImage) else (r[0], sha256(r[1])) for r in results]


def member_bytes(path, names) -> int:
    """Bytes of the referenced members' regions: local header + data, what must be fetched at least."""
    from llava_hf.images import LocalFile
    from llava_hf.zipdir import ZipDirectory

    directory = ZipDirectory.from_transport(LocalFile(str(path)), str(path))
    top = directory.top_folder()
    total = 0
    for name in names:
        i = directory.find(name) if directory.find(name) >= 0 else directory.find(top + name)
        entry = directory.entry(i)
        total += entry.span_end - entry.header_offset
    return total


@pytest.mark.parametrize("kind", ["stored", "deflated", "folder", "zip64"])
def test_read_many_over_http_gives_the_bytes_of_the_local_zip(serve, zips, kind):
    root, images = zips
    server = serve(root)
    names = referenced()
    remote = open_root(server.url(f"{kind}.zip"))
    assert isinstance(remote, ZipRoot) and isinstance(remote.transport, HttpFile)
    got = digests(remote.read_many(names))
    assert got == digests(open_root(str(root / f"{kind}.zip")).read_many(names))
    assert got == [(name, sha256(images[name])) for name in names]


def test_a_big_directory_takes_two_requests(serve, zips, tmp_path):
    _, images = zips
    folder = tmp_path / "www"
    folder.mkdir()
    path = folder / "many.zip"
    blobs = list(images.values())
    # 3,000 members: a directory of ~190 KB, bigger than the tail the first request brings.
    _write_zip(path, {f"{i:05d}/{i:09d}.jpg": blobs[i % len(blobs)] for i in range(3000)}, zipfile.ZIP_STORED)
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        directory_start = zf.start_dir
    assert size - directory_start > 65577
    server = serve(folder)
    remote = open_root(server.url("many.zip"))
    assert list(remote.read_many([])) == []
    assert server.requests == 0  # nothing is asked before a name is
    missing = next(remote.read_many(["none.jpg"]))  # looked up in the directory: nothing else is fetched
    assert missing.reason == "missing"
    assert ranges(server) == ["bytes=-65577", f"bytes={directory_start}-{size - 65577 - 1}"]
    assert server.bytes_sent == size - directory_start
    assert next(remote.read_many(["01234/000001234.jpg"])) == ("01234/000001234.jpg", blobs[1234 % len(blobs)])
    assert server.requests == 3


def test_members_cost_their_own_bytes(serve, zips):
    root, _ = zips
    server = serve(root)
    names = referenced()
    remote = open_root(server.url("stored.zip"))
    assert next(remote.read_many(["none.jpg"])).reason == "missing"
    assert server.requests == 1  # a small zip: its directory came with the tail
    server.reset_stats()
    assert len(list(remote.read_many(names))) == 60
    referenced_bytes = member_bytes(root / "stored.zip", names)
    # Members in the tail came with the first request; the rest cost at most 10% more than their regions,
    # in fewer requests than images (neighbours merged).
    assert server.bytes_sent <= 1.1 * referenced_bytes
    assert server.requests < 60


def test_a_zip_under_a_top_folder_resolves_json_names(serve, zips):
    root, images = zips
    server = serve(root)
    remote = open_root(server.url("folder.zip"))
    assert digests(remote.read_many(["000000000007.jpg"])) == [("000000000007.jpg", sha256(images["000000000007.jpg"]))]
    assert remote.url("000000000007.jpg") == f"zip://train2017/000000000007.jpg::{server.url('folder.zip')}"


def test_twenty_percent_of_requests_failing_still_gives_the_exact_images(serve, zips):
    root, images = zips
    server = serve(root, fault_rate=0.2, faults=("503", "reset"), seed=1)
    names = referenced(count=120)
    transport = HttpFile(server.url("deflated.zip"), retry=FAST)
    remote = ZipRoot(server.url("deflated.zip"), transport=transport)
    # One batch per image: many requests, so that a fifth of them fail.
    got = [digests(remote.read_many([name]))[0] for name in names]
    assert got == [(name, sha256(images[name])) for name in names]
    faults = [hit.fault for hit in server.log if hit.fault]
    assert {"503", "reset"} <= set(faults)
    # One request for the tail (directory included), one per image outside it, one per fault.
    assert server.requests == 1 + len(names) - _in_tail(root / "deflated.zip", names) + len(faults)


def _in_tail(path, names) -> int:
    """How many of `names` lie wholly in the last 65,577 bytes (the first request brings them)."""
    tail_start = path.stat().st_size - 65577
    with zipfile.ZipFile(path) as zf:
        return sum(zf.getinfo(name).header_offset >= tail_start for name in names)


def test_bytes_damaged_in_transit_are_fetched_again(serve, zips):
    root, images = zips
    server = serve(root)
    name = ZIP_NAMES[0]  # the first member: outside the tail
    remote = open_root(server.url("stored.zip"))
    assert list(remote.read_many([ZIP_NAMES[-1]]))  # the directory
    server.reset_stats()
    server.configure(script=["corrupt"])
    assert digests(remote.read_many([name])) == [(name, sha256(images[name]))]
    assert [hit.fault for hit in server.log] == ["corrupt", None]
    assert ranges(server)[0] == ranges(server)[1]


def test_a_member_corrupt_in_the_archive_is_unreadable_naming_url_and_member(serve, zips, tmp_path):
    root, images = zips
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((root / "stored.zip").read_bytes())
    with zipfile.ZipFile(root / "stored.zip") as zf:
        info = zf.getinfo(ZIP_NAMES[3])
    data[info.header_offset + 30 + len(ZIP_NAMES[3]) + 100] ^= 0xFF  # one byte of the member's data
    (damaged / "stored.zip").write_bytes(bytes(data))
    server = serve(damaged)
    remote = open_root(server.url("stored.zip"))
    got = list(remote.read_many([ZIP_NAMES[2], ZIP_NAMES[3]]))
    assert got[0] == (ZIP_NAMES[2], images[ZIP_NAMES[2]])
    assert isinstance(got[1], BadImage) and got[1].reason == "unreadable"
    assert str(got[1]) == (
        f"{ZIP_NAMES[3]} in {server.url('stored.zip')} is corrupt (size or CRC differs from the zip directory)"
    )
    span = f"bytes={info.header_offset}-"
    assert sum(1 for r in ranges(server) if r.startswith(span)) == 1  # the member, alone, once more


def test_a_member_the_archive_lacks_is_missing_naming_the_url(serve, zips):
    root, _ = zips
    server = serve(root)
    got = list(open_root(server.url("stored.zip")).read_many(["000000999999.jpg"]))
    assert isinstance(got[0], BadImage) and got[0].reason == "missing"
    assert str(got[0]) == f"image '000000999999.jpg' not found under {server.url('stored.zip')}"


def test_a_server_ignoring_range_makes_every_image_unreadable_after_one_request(serve, zips):
    root, _ = zips
    server = serve(root, ignore_range=True)
    url = server.url("stored.zip")
    got = list(open_root(url).read_many(ZIP_NAMES[:3]))
    assert [bad.reason for bad in got] == ["unreadable"] * 3
    assert {str(bad) for bad in got} == {
        f"image archive {url} cannot be opened: {url}: the server ignores range requests (HTTP 200 with the "
        "whole file for 'bytes=-65577'); download the file and give its local path instead"
    }
    assert server.requests == 1  # asked once, not once an image


def test_an_archive_that_is_gone_is_unreadable_naming_the_url(serve, zips):
    root, _ = zips
    server = serve(root)
    url = server.url("gone.zip")
    got = list(open_root(url).read_many(ZIP_NAMES[:2]))
    assert [str(bad) for bad in got] == [f"image archive {url} cannot be opened: {url}: HTTP 404 Not Found"] * 2
    assert server.requests == 1


def test_open_root_picks_the_remote_root_from_the_url(serve, zips):
    root, _ = zips
    server = serve(root)
    assert isinstance(open_root(server.url("stored.zip") + "?signature=abc"), ZipRoot)
    assert isinstance(open_root(server.url("coco/train2017")), RemoteFolderRoot)
    assert server.requests == 0


def test_a_remote_zip_root_pickles_and_reads_in_the_copy(serve, zips):
    root, images = zips
    server = serve(root)
    remote = open_root(server.url("stored.zip"))
    assert digests(remote.read_many(ZIP_NAMES[:1])) == [(ZIP_NAMES[0], sha256(images[ZIP_NAMES[0]]))]
    requests = server.requests
    copy = pickle.loads(pickle.dumps(remote))
    assert digests(copy.read_many(ZIP_NAMES[1:2])) == [(ZIP_NAMES[1], sha256(images[ZIP_NAMES[1]]))]
    assert server.requests == requests + 1  # the directory came along


def test_a_zip_behind_an_fsspec_url(zips):
    import fsspec

    root, images = zips
    fs = fsspec.filesystem("memory")
    fs.pipe("/llava_hf_zip/stored.zip", (root / "stored.zip").read_bytes())
    try:
        remote = open_root("memory://llava_hf_zip/stored.zip")
        assert isinstance(remote.transport, FsspecFile)
        names = referenced()
        assert digests(remote.read_many(names)) == [(name, sha256(images[name])) for name in names]
    finally:
        fs.rm("/llava_hf_zip", recursive=True)


def test_open_transport_of_a_path_is_the_local_file(zips):
    from llava_hf.images import LocalFile

    root, _ = zips
    t = open_transport(str(root / "stored.zip"))
    assert isinstance(t, LocalFile)
    assert t.size == (root / "stored.zip").stat().st_size
    assert t.read_at(0, 4) == b"PK\x03\x04"


def test_an_encrypted_member_is_not_read_twice(serve, zips, tmp_path):
    root, _ = zips
    folder = tmp_path / "enc"
    folder.mkdir()
    data = bytearray((root / "stored.zip").read_bytes())
    with zipfile.ZipFile(root / "stored.zip") as zf:
        info = zf.getinfo(ZIP_NAMES[0])
        central = data.index(b"PK\x01\x02", zf.start_dir)  # the first central entry: ZIP_NAMES[0]
    data[central + 8] |= 0x1  # the "encrypted" flag, in the directory
    data[info.header_offset + 6] |= 0x1  # and in the local header
    (folder / "stored.zip").write_bytes(bytes(data))
    server = serve(folder)
    url = server.url("stored.zip")
    (got,) = open_root(url).read_many([ZIP_NAMES[0]])
    assert isinstance(got, BadImage) and got.reason == "unreadable"
    assert str(got) == f"{ZIP_NAMES[0]} in {url} is encrypted"
    assert ranges(server)[1:] == [
        f"bytes={info.header_offset}-{info.header_offset + 30 + len(ZIP_NAMES[0]) + info.compress_size - 1}"
    ]
