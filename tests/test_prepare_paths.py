"""The batched zip read path, the archive read-through, the parallel scan and the code-hash memo (issue 12):
each gives exactly what the plain path gives, and takes the plain path whenever its shortcut does not hold."""

from __future__ import annotations

import io
import os
import posixpath
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import jpeg

from llava_hf import convert, hook, images
from llava_hf.errors import BadImage, SourceError
from llava_hf.images import LocalFile, ZipRoot
from llava_hf.sources import Inputs, index_json_array


def _archive(path, count=300, *, seed=0):
    """A zip of `count` JPEGs, stored and deflated mixed, and the bytes of each by name."""
    rng = random.Random(seed)
    members = {f"{k // 50:02d}/{k:05d}.jpg": jpeg(k % 7) + rng.randbytes(rng.randint(0, 3000)) for k in range(count)}
    with zipfile.ZipFile(path, "w") as zf:
        for k, (name, data) in enumerate(members.items()):
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if k % 3 == 0 else zipfile.ZIP_STORED)
    return members


def test_a_batch_in_random_order_reads_exactly_what_zipfile_reads(tmp_path):
    members = _archive(tmp_path / "a.zip")
    names = list(members)
    random.Random(1).shuffle(names)
    asked = [*names[:120], "00/missing.jpg", "../00/00001.jpg", names[5], *names[120:]]
    root = ZipRoot(str(tmp_path / "a.zip"))
    results = list(root.read_many(asked))
    assert len(results) == len(asked)
    for name, result in zip(asked, results):
        if name == "00/missing.jpg":
            assert isinstance(result, BadImage) and result.reason == "missing"
        elif name.startswith(".."):
            assert isinstance(result, BadImage) and result.reason == "unsafe_path"
        else:
            assert type(result[1]) is bytes and result == (name, members[name])
    # The views the prepare joins hold the same bytes.
    views = list(root.read_views(names))
    assert [(n, bytes(d)) for n, d in views] == [(n, members[n]) for n in names]


def test_a_damaged_or_foreign_member_in_a_batch_is_named_and_the_others_read(tmp_path):
    members = _archive(tmp_path / "a.zip", 40)
    with zipfile.ZipFile(tmp_path / "a.zip", "a") as zf:
        zf.writestr("text.jpg", b"not an image at all", zipfile.ZIP_STORED)
        zf.writestr("empty.jpg", b"", zipfile.ZIP_STORED)
    data = bytearray((tmp_path / "a.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        info = zf.getinfo("00/00001.jpg")  # stored (1 % 3 != 0): flip a byte of its data
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    (tmp_path / "b.zip").write_bytes(bytes(data))
    names = ["00/00002.jpg", "00/00001.jpg", "text.jpg", "empty.jpg", "00/00000.jpg"]
    results = list(ZipRoot(str(tmp_path / "b.zip")).read_many(names))
    assert results[0] == ("00/00002.jpg", members["00/00002.jpg"])
    assert results[4] == ("00/00000.jpg", members["00/00000.jpg"])
    assert [r.reason for r in results[1:4]] == ["unreadable", "not_an_image", "empty"]
    assert (
        str(results[1])
        == f"00/00001.jpg in {tmp_path / 'b.zip'} is corrupt (size or CRC differs from the zip directory)"
    )


@pytest.mark.parametrize("inline_below", [0.0, 1e9])
def test_spans_read_inline_or_by_the_threads_are_the_same_bytes(tmp_path, monkeypatch, inline_below):
    monkeypatch.setattr(images, "SPAN_INLINE_BELOW", inline_below)  # 0: every batch blocks (threads); 1e9: inline
    blob = random.Random(2).randbytes(1 << 20)
    (tmp_path / "f.bin").write_bytes(blob)
    spans = [(random.Random(k).randrange(0, len(blob) - 5000), 1 + k * 7 % 5000) for k in range(333)]
    got = list(LocalFile(str(tmp_path / "f.bin")).read_spans(spans))
    assert got == [blob[o : o + n] for o, n in spans]


def test_a_zip_the_prepare_reads_most_of_is_read_through_once(tmp_path, monkeypatch):
    from llava_hf.pagecache import evict, resident_bytes

    _archive(tmp_path / "a.zip", 200)
    path = str(tmp_path / "a.zip")
    evict(path)
    started = []
    monkeypatch.setattr(images, "_READ_THROUGH", set())
    monkeypatch.setattr(images, "_read_through", lambda p, end: started.append((p, end)))
    root = ZipRoot(path)
    assert root.expect(99) is False  # under half of the 200 members: read as asked, nothing ahead
    assert root.expect(100) is True
    assert root.expect(200) is True  # once per process and file
    assert started == [(path, root._directory.directory_offset)]
    assert ZipRoot(path).expect(200) is True  # another root of the same file: already under way
    assert len(started) == 1
    images._READ_THROUGH.clear()
    monkeypatch.setattr(images, "_available_memory", lambda: 2 * root._directory.directory_offset - 1)
    assert ZipRoot(path).expect(200) is False  # over PREFETCH_MEMORY of what is available
    assert len(started) == 1
    monkeypatch.undo()
    images._read_through(path, root._directory.directory_offset)
    assert resident_bytes(path) >= root._directory.directory_offset - os.sysconf("SC_PAGE_SIZE")


def test_the_read_through_reads_only_what_is_not_in_the_page_cache(tmp_path, monkeypatch):
    from llava_hf.pagecache import evict, resident_bytes

    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * images.PREFETCH_CHUNK + 12_345))
    size = path.stat().st_size
    read: list[int] = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: read.append(offset) or real(fd, buffers, offset))
    evict(path)
    images._read_through(str(path), size)
    assert read[0] == 0  # cold: read (later chunks may come in by the kernel's read-ahead, and are skipped)
    assert resident_bytes(path) == size
    read.clear()
    images._read_through(str(path), size)  # every page cached: nothing is read again
    assert read == []
    evict(path)
    with open(path, "rb") as f:  # the second chunk cached, the first not
        f.seek(images.PREFETCH_CHUNK)
        f.read(images.PREFETCH_CHUNK)
    images._read_through(str(path), size)
    assert read[0] == 0 and images.PREFETCH_CHUNK not in read
    assert resident_bytes(path) == size


def test_another_users_files_are_read_though_mincore_cannot_tell(request):
    """mincore reports every page of a file the process neither owns nor may write as cached: the
    read-through of someone else's read-only zip must not take that for warm, and the lazy reader's probes
    of someone else's Arrow file must not take it for rows in memory."""
    import pyarrow as pa

    from llava_hf import reader
    from llava_hf.pagecache import evict, mincore_tells, resident_bytes

    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    shared = Path(tempfile.mkdtemp())  # pytest's own folders are closed to other users
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    os.chmod(shared, 0o755)
    path, arrow = shared / "shared.bin", shared / "shared.arrow"
    path.write_bytes(os.urandom(2 * images.PREFETCH_CHUNK))
    table = pa.table({"id": [f"r{i}" for i in range(1_000)]})
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for file in (path, arrow):
        os.chmod(file, 0o644)
        evict(file)

    def probed_blind() -> bool:
        lazy = reader.open_lazy(str(arrow))
        start = reader._mapping_of(lazy.column(0).chunk(0).buffers()[1].address)[0]
        return start in reader._blind and not reader._in_memory(start, start + 4096)

    pid = os.fork()
    if pid == 0:  # the child, as nobody: exit status 0 only when every check holds
        try:
            os.setgid(65534)
            os.setuid(65534)
            fd = os.open(path, os.O_RDONLY)
            ok = not mincore_tells(fd)
            os.close(fd)
            images._read_through(str(path), path.stat().st_size)
            os._exit(0 if ok and probed_blind() else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert resident_bytes(path) == path.stat().st_size  # nobody's read-through read the file
    fd = os.open(path, os.O_RDONLY)
    try:
        assert mincore_tells(fd)  # the owner's mincore tells
    finally:
        os.close(fd)
    lazy = reader.open_lazy(str(arrow))
    assert reader._mapping_of(lazy.column(0).chunk(0).buffers()[1].address)[0] not in reader._blind


def test_a_remote_archive_is_never_read_through(tmp_path):
    _archive(tmp_path / "a.zip", 10)
    remote = SimpleNamespace(size=os.path.getsize(tmp_path / "a.zip"), read_at=None, read_spans=None)
    assert ZipRoot(str(tmp_path / "a.zip"), transport=remote).expect(10) is False  # fetched as asked, never whole


def _source():
    return SimpleNamespace(filename="chat.json", metadata_filename="meta.json")


def test_the_parallel_scan_gives_the_serial_scans_indexes(tmp_path):
    chat = [
        {"id": str(k), "image": f"{k}.jpg", "conversations": [{"from": "human", "value": "x" * k}]} for k in range(2500)
    ]
    meta = [{"id": str(k), "image": f"{k}.jpg", "blip_caption": "c" * (k % 40)} for k in range(2500)]
    (tmp_path / "chat.json").write_text(json_dump(chat))
    (tmp_path / "meta.json").write_text(json_dump(meta))
    inputs = Inputs(str(tmp_path / "chat.json"), str(tmp_path / "meta.json"), None, "files")
    serial = convert._index_pair(inputs, _source(), parallel=False)
    parallel = convert._index_pair(inputs, _source(), parallel=True)
    assert parallel == serial
    assert serial[1] == index_json_array(str(tmp_path / "meta.json"), "meta.json")
    assert serial[0].num_records == serial[1].num_records == 2500


def test_the_parallel_scan_raises_the_metadata_files_own_error(tmp_path):
    (tmp_path / "chat.json").write_text('[{"id": "a"}, {"id": "b"}]')
    (tmp_path / "meta.json").write_text('[{"id": "a"} {"id": "b"}]')
    inputs = Inputs(str(tmp_path / "chat.json"), str(tmp_path / "meta.json"), None, "files")
    with pytest.raises(SourceError) as info:
        convert._index_pair(inputs, _source(), parallel=True)
    assert str(info.value) == (
        "meta.json: record 1: expected ',' or ']' after the record with id='a' (byte 13), found '{'; "
        "the file is truncated or malformed"
    )
    (tmp_path / "chat.json").write_text('[{"id": "a"},]')
    with pytest.raises(SourceError, match="^chat.json: record 1: malformed JSON at byte 13"):
        convert._index_pair(inputs, _source(), parallel=True)  # the chat file's error first


def json_dump(records) -> str:
    import json

    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


def test_the_code_hash_is_kept_and_a_bad_memo_is_recomputed(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    hook.module_hash.cache_clear()
    try:
        first = hook.module_hash()
        (memo,) = (tmp_path / "cache" / "llava_hf_code").iterdir()
        assert memo.read_text() == first
        hook.module_hash.cache_clear()
        memo.write_text("half-writ")
        assert hook.module_hash() == first  # recomputed, not trusted
        assert memo.read_text() == first
        hook.module_hash.cache_clear()
        monkeypatch.setattr(hook, "_code_only", None)  # a memo that is read back parses nothing
        assert hook.module_hash() == first
    finally:
        hook.module_hash.cache_clear()


def test_the_builder_module_keeps_the_standard_path_functions(release, cache_dir):
    import llava_hf
    from llava_hf import builder

    llava_hf.load_builder("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    assert builder.os.path.join is posixpath.join  # datasets' streaming patch would make it xjoin


def test_zip_bytes_views_concatenate_into_the_image_column(tmp_path):
    from llava_hf.features import binary_array

    members = _archive(tmp_path / "a.zip", 20)
    views = [data for _, data in ZipRoot(str(tmp_path / "a.zip")).read_views(list(members))]
    column = binary_array([*views, None])
    assert column.to_pylist() == [*members.values(), None]
    assert io.BytesIO(column[0].as_py()).read(3) == b"\xff\xd8\xff"


def test_merged_reads_vectorised_are_the_loops():
    import numpy as np

    from llava_hf.images import _SPAN_BYTES, MERGE_GAP, _merge_spans_sorted

    rng = random.Random(3)
    for trial in range(200):
        count = rng.randint(1, 300)
        spread = rng.choice([50_000, 5_000_000, 500_000_000])
        starts = np.array([rng.randrange(spread) for _ in range(count)], dtype=np.int64)
        big = rng.random() < 0.2  # some reads near _SPAN_BYTES: the loop decides those
        ends = starts + np.array(
            [rng.randint(1, _SPAN_BYTES // 2 if big else 40_000) for _ in range(count)], dtype=np.int64
        )
        fast = _merge_spans_sorted(starts, ends, MERGE_GAP)
        loop = _merge_spans_sorted(starts, ends, MERGE_GAP, waste=float("inf"))  # the loop, waste never binding
        assert fast == loop, trial
        covered = sorted(k for _, _, members in fast for k in members)
        assert covered == list(range(count))


def _split_case(tmp_path, monkeypatch, records: list[str]) -> tuple[str, object]:
    from llava_hf import sources

    monkeypatch.setattr(sources, "SPLIT_SCAN_BYTES", 0)  # any file is split
    path = tmp_path / "big.json"
    path.write_text("[\n" + ",\n".join(records) + "\n]\n")
    return str(path), sources


def _records(count: int) -> list[str]:
    return [
        f'{{"id": "r{k}", "image": "{k}.jpg", "conversations": [{{"from": "human", "value": "v{k}"}}]}}'
        for k in range(count)
    ]


def test_a_split_scan_is_the_whole_scan(tmp_path, monkeypatch):
    path, sources = _split_case(tmp_path, monkeypatch, _records(5000))
    middle = sources._guess_boundary(path, os.path.getsize(path) // 2)
    assert middle is not None and Path(path).read_bytes()[middle : middle + 8] == b'{"id": "'
    assert sources.index_json_array_split(path, "big.json") == index_json_array(path, "big.json")


def test_a_split_guessed_inside_a_string_is_not_trusted(tmp_path, monkeypatch):
    records = _records(4000)
    # A value holding "}, {" just past the middle: the guess lands inside it.
    records[2000] = (
        '{"id": "trap", "image": "t.jpg", "conversations": [{"from": "gpt", "value": "'
        + "x" * 50
        + '}, {not a record"}]}'
    )
    path, sources = _split_case(tmp_path, monkeypatch, records)
    data = Path(path).read_bytes()
    guess = sources._guess_boundary(path, data.index(b"trap") - 10)
    assert data[guess - 3 : guess + 4] == b"}, {not"
    monkeypatch.setattr(sources, "_guess_boundary", lambda p, at: guess)
    whole = index_json_array(path, "big.json")
    assert sources.index_json_array_split(path, "big.json") == whole
    assert whole.num_records == 4000


@pytest.mark.parametrize("where", [0.25, 0.75])
def test_a_split_scan_raises_the_whole_scans_error(tmp_path, monkeypatch, where):
    records = _records(4000)
    bad = int(len(records) * where)
    records[bad] = records[bad].replace('"image":', '"image"')  # a missing colon, in the first or second half
    path, sources = _split_case(tmp_path, monkeypatch, records)
    with pytest.raises(SourceError) as whole:
        index_json_array(path, "big.json")
    with pytest.raises(SourceError) as split:
        sources.index_json_array_split(path, "big.json")
    assert str(split.value) == str(whole.value)
    assert f"record {bad}: malformed JSON at byte" in str(whole.value)
