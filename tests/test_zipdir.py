"""The compact zip directory against zipfile's reading of the same archives."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest

from llava_hf.images import LocalFile
from llava_hf.zipdir import ZipDirectory, ZipFormatError, ZipMemberError, read_member


class Bytes:
    """An in-memory transport that counts its reads."""

    def __init__(self, data: bytes):
        self.data, self.size, self.reads = data, len(data), []

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]

    def read_spans(self, spans):
        for offset, length in spans:
            yield self.read_at(offset, length)


def build(members, *, comment=b"", prefix=b"", compression=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
        zf.comment = comment
    return prefix + out.getvalue()


def same_as_zipfile(data: bytes, directory: ZipDirectory, shift: int = 0) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert len(directory) == len(infos)
        assert list(directory.names()) == [i.filename for i in infos]
        for k, info in enumerate(infos):
            entry = directory.entry(k)
            assert (entry.name, entry.compress_size, entry.file_size, entry.crc, entry.method) == (
                info.filename,
                info.compress_size,
                info.file_size,
                info.CRC,
                info.compress_type,
            )
            assert entry.header_offset == info.header_offset + shift
            if not info.is_dir():
                assert directory.find(info.filename) == k
                assert read_member(entry, data, 0, info.filename) == zf.read(info)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_directory_matches_zipfile(compression):
    members = [(f"{k // 10:05d}/{k:09d}.jpg", bytes([k % 256]) * (k * 7 % 300 + 1)) for k in range(200)]
    members.append(("00000/", b""))
    data = build(members, comment=b"a comment", compression=compression)
    transport = Bytes(data)
    directory = ZipDirectory.from_transport(transport, "t.zip")
    same_as_zipfile(data, directory)
    assert len(transport.reads) == 2  # the tail, then the whole directory
    assert directory.find("nope.jpg") == -1
    assert directory.find_many(["00001/000000012.jpg", "x", "00019/000000199.jpg"]).tolist() == [12, -1, 199]
    assert directory.top_folder() == ""


def test_span_ends_are_the_next_member():
    members = [(f"{k}.jpg", b"\xff\xd8\xff" + bytes(k)) for k in range(5)]
    data = build(members)
    directory = ZipDirectory.from_transport(Bytes(data), "t.zip")
    offsets = [directory.entry(k).header_offset for k in range(5)]
    assert [directory.entry(k).span_end for k in range(5)] == [*offsets[1:], directory.directory_offset]


def test_prepended_bytes_shift_every_offset():
    members = [("a.jpg", b"\xff\xd8\xffa"), ("b.jpg", b"\xff\xd8\xffbb")]
    plain = build(members)
    data = build(members, prefix=b"#!stub\n" * 10)
    directory = ZipDirectory.from_transport(Bytes(data), "t.zip")
    same_as_zipfile(plain, ZipDirectory.from_transport(Bytes(plain), "t.zip"))
    for k in range(2):
        entry = directory.entry(k)
        assert read_member(entry, data, 0, entry.name) == members[k][1]


def test_zip64_end_records_and_many_members():
    # More than 65,535 members: zipfile writes the zip64 end record and locator.
    members = [(f"{k:06d}.jpg", k.to_bytes(3, "little")) for k in range(70_000)]
    data = build(members)
    assert b"PK\x06\x06" in data[-200:]
    directory = ZipDirectory.from_transport(Bytes(data), "big.zip")
    assert len(directory) == 70_000
    assert directory.find("069999.jpg") == 69_999
    entry = directory.entry(directory.find("012345.jpg"))
    assert read_member(entry, data, 0, entry.name) == (12345).to_bytes(3, "little")
    # Compact: arrays plus names, far below zipfile's ~0.8 KB a member.
    assert directory.nbytes < 70_000 * (50 + 10)


def test_zip64_extra_fields_in_the_directory():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        with zf.open("forced.jpg", "w", force_zip64=True) as f:
            f.write(b"\xff\xd8\xff" + b"x" * 100)
        zf.writestr("plain.jpg", b"\xff\xd8\xffy")
    data = out.getvalue()
    same_as_zipfile(data, ZipDirectory.from_transport(Bytes(data), "t.zip"))


def test_top_folder():
    data = build([("train2017/", b""), ("train2017/000000000001.jpg", b"1"), ("train2017/000000000002.jpg", b"2")])
    assert ZipDirectory.from_transport(Bytes(data), "t.zip").top_folder() == "train2017/"
    data = build([("train2017/a.jpg", b"1"), ("val2017/b.jpg", b"2")])
    assert ZipDirectory.from_transport(Bytes(data), "t.zip").top_folder() == ""
    data = build([("only/", b"")])
    assert ZipDirectory.from_transport(Bytes(data), "t.zip").top_folder() == ""


def test_cp437_and_utf8_names():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("café.jpg", b"1")  # zipfile sets the UTF-8 flag
        info = zipfile.ZipInfo("plain.jpg")
        zf.writestr(info, b"2")
    data = bytearray(out.getvalue())
    directory = ZipDirectory.from_transport(Bytes(bytes(data)), "t.zip")
    assert directory.find("café.jpg") == 0 and directory.name(0) == "café.jpg"
    # A name without the UTF-8 flag is CP437, as zipfile reads it.
    legacy = build([("\u00e9t\u00e9.jpg".encode("cp437").decode("cp437"), b"3")])
    with zipfile.ZipFile(io.BytesIO(legacy)) as zf:
        (expected,) = zf.namelist()
    assert list(ZipDirectory.from_transport(Bytes(legacy), "t.zip").names()) == [expected]


def test_not_a_zip_and_truncated_directories():
    with pytest.raises(ZipFormatError, match=r"^x.zip is not a zip file \(no end-of-central-directory record\)$"):
        ZipDirectory.from_transport(Bytes(b"not a zip" * 100), "x.zip")
    data = build([("a.jpg", b"1"), ("b.jpg", b"2")])
    directory_at = data.index(b"PK\x01\x02")
    damaged = data[:directory_at] + b"XXXX" + data[directory_at + 4 :]
    with pytest.raises(ZipFormatError, match=r"damaged zip directory \(no member header at its byte 0\)"):
        ZipDirectory.from_transport(Bytes(damaged), "x.zip")
    cut = data[:directory_at] + data[directory_at + 10 :]  # the directory no longer fits before the end record
    with pytest.raises(ZipFormatError):
        ZipDirectory.from_transport(Bytes(cut), "x.zip")


def test_member_errors():
    picture = b"\xff\xd8\xff" + b"p" * 500
    data = bytearray(build([("a.jpg", picture)], compression=zipfile.ZIP_DEFLATED))
    directory = ZipDirectory.from_transport(Bytes(bytes(data)), "t.zip")
    entry = directory.entry(0)
    with pytest.raises(ZipMemberError, match="is cut short"):
        read_member(entry, bytes(data[: entry.header_offset + 40]), 0, "a.jpg in t.zip")
    flipped = bytearray(data)
    flipped[entry.header_offset + 30 + len("a.jpg") + 3] ^= 0xFF
    with pytest.raises(ZipMemberError) as info:
        read_member(entry, bytes(flipped), 0, "a.jpg in t.zip")
    assert info.value.reason == "unreadable"
    with pytest.raises(ZipMemberError, match="^a.jpg in t.zip has no local header where the zip directory says$"):
        read_member(entry, b"\x00" * len(data), 0, "a.jpg in t.zip")


def test_pickles_and_local_transport(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(build([("a.jpg", b"\xff\xd8\xffa")]))
    transport = LocalFile(str(path))
    directory = ZipDirectory.from_transport(transport, str(path))
    clone = pickle.loads(pickle.dumps(directory))
    assert clone.find("a.jpg") == 0
    assert read_member(clone.entry(0), transport.read_at(*clone.entry(0).span), clone.entry(0).header_offset, "a")
    assert pickle.loads(pickle.dumps(transport)).read_at(0, 4) == b"PK\x03\x04"


def test_the_member_crc_is_zlibs_crc32():
    import zlib

    from llava_hf.zipdir import crc32

    for data in (b"", b"a", bytes(range(256)) * 300, b"\xff\xd8\xff" + b"\x00" * 70_000):
        assert crc32(data) == zlib.crc32(data)
        assert crc32(memoryview(data)[1:]) == zlib.crc32(data[1:])


@pytest.mark.parametrize("chunk", [4_096, 1 << 22])
def test_entries_found_at_once_or_walked_give_the_same_directory(monkeypatch, chunk):
    """The vectorised scan of the directory is trusted only when its entries chain; a name holding the
    entry signature falls back to the walk; both give zipfile's reading, across chunk boundaries too."""
    import llava_hf.zipdir as zipdir

    monkeypatch.setattr(zipdir, "_CHUNK", chunk)
    walked = []
    walk = zipdir._entries_one_by_one
    monkeypatch.setattr(zipdir, "_entries_one_by_one", lambda buf, label: walked.append(len(buf)) or walk(buf, label))
    plain = build([(f"{k % 7:02d}/{'x' * (k % 37)}{k:06d}.jpg", bytes([k % 251]) * (k % 5)) for k in range(3_000)])
    same_as_zipfile(plain, ZipDirectory.from_transport(Bytes(plain), "plain.zip"))
    assert walked == []
    tricky = build(
        [(f"{k:05d}.jpg" if k != 1_234 else "PK\x01\x02-in-a-name.jpg", b"\xff\xd8\xff") for k in range(3_000)]
    )
    same_as_zipfile(tricky, ZipDirectory.from_transport(Bytes(tricky), "tricky.zip"))
    assert len(walked) == 1  # only the chunk holding that name was walked
    # damage found by the walk, with its message, wherever the scan stops trusting itself
    broken = bytearray(plain)
    at = ZipDirectory.from_transport(Bytes(plain), "plain.zip").directory_offset + 46 * 2_000 + 40_000
    at = plain.index(b"PK\x01\x02", at)
    broken[at : at + 4] = b"XXXX"
    with pytest.raises(ZipFormatError, match=r"damaged zip directory \(no member header at its byte \d+\)"):
        ZipDirectory.from_transport(Bytes(bytes(broken)), "broken.zip")


# --- archives a review found hostile: each named, bounded, or read as zipfile reads it ---------------------


def _central(data: bytes, name: bytes) -> int:
    """Where the central directory header of member `name` starts in `data`."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        if data[at + 46 : at + 46 + int.from_bytes(data[at + 28 : at + 30], "little")] == name:
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise KeyError(name)


def _patched(data: bytes, at: int, value: int, width: int = 4) -> bytes:
    return data[:at] + value.to_bytes(width, "little") + data[at + width :]


def test_a_member_that_says_it_inflates_to_nothing_is_never_inflated_whole(tmp_path):
    import tracemalloc

    from llava_hf.images import ZipRoot

    data = build(
        [("a.jpg", b"\xff\xd8\xff" + b"a" * 50), ("bomb.jpg", bytes(64 << 20))], compression=zipfile.ZIP_DEFLATED
    )
    central = _central(data, b"bomb.jpg")
    local = int.from_bytes(data[central + 42 : central + 46], "little")
    data = _patched(_patched(data, central + 24, 0), local + 22, 0)  # uncompressed size 0, in both headers
    assert len(data) < 1 << 20
    directory = ZipDirectory.from_transport(Bytes(data), "bomb.zip")
    entry = directory.entry(directory.find("bomb.jpg"))
    assert entry.file_size == 0
    tracemalloc.start()
    with pytest.raises(ZipMemberError, match=r"^bomb.jpg is corrupt \(size or CRC differs from the zip directory\)$"):
        read_member(entry, data, 0, "bomb.jpg")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20  # not the 64 MiB it inflates to
    path = tmp_path / "bomb.zip"
    path.write_bytes(data)
    good, bad = ZipRoot(str(path)).read_many(["a.jpg", "bomb.jpg"])
    assert good == ("a.jpg", b"\xff\xd8\xff" + b"a" * 50)
    assert (bad.reason, str(bad)) == (
        "unreadable",
        f"bomb.jpg in {path} is corrupt (size or CRC differs from the zip directory)",
    )


def test_a_member_placed_past_the_end_is_named_and_its_neighbours_are_read(tmp_path):
    from llava_hf.errors import BadImage
    from llava_hf.images import ZipRoot

    members = [(f"{k}.jpg", b"\xff\xd8\xff" + bytes([k]) * 1000) for k in range(4)]
    data = build(members)
    data = _patched(data, _central(data, b"2.jpg") + 42, len(data) + 1000)  # its local header offset
    path = tmp_path / "t.zip"
    path.write_bytes(data)
    results = list(ZipRoot(str(path)).read_many([name for name, _ in members]))
    assert [r for k, r in enumerate(results) if k != 2] == [m for k, m in enumerate(members) if k != 2]
    assert isinstance(results[2], BadImage) and results[2].reason == "unreadable"
    assert str(results[2]) == (
        f"2.jpg in {path} cannot be read: the zip directory places it at byte {len(data) + 1000:,}, "
        f"past the end of the archive ({len(data):,} bytes)"
    )


def test_an_end_record_that_claims_more_members_than_its_directory_holds():
    data = build([("a.jpg", b"1"), ("b.jpg", b"2")])
    end = data.rindex(b"PK\x05\x06")
    size = int.from_bytes(data[end + 12 : end + 16], "little")
    lying = _patched(_patched(data, end + 8, 0xFFFE, 2), end + 10, 0xFFFE, 2)  # entries on this disk, in all
    with pytest.raises(
        ZipFormatError,
        match=rf"^t.zip: the end record says 65,534 members, but its {size}-byte directory holds at most {size // 46}$",
    ):
        ZipDirectory.from_transport(Bytes(lying), "t.zip")


def test_names_flagged_utf8_that_are_not_are_kept_as_bytes(tmp_path):
    from llava_hf.images import ZipRoot

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("Z/a.jpg", b"\xff\xd8\xffa")
        zf.writestr("Z/b.jpg", b"\xff\xd8\xffb")
    data = out.getvalue().replace(b"Z/", b"\xff/")
    for name in (b"\xff/a.jpg", b"\xff/b.jpg"):  # flagged "UTF-8", which b"\xff" is not
        at = _central(data, name) + 8
        data = _patched(data, at, int.from_bytes(data[at : at + 2], "little") | 0x800, 2)
    directory = ZipDirectory.from_transport(Bytes(data), "t.zip")
    assert directory.top_folder() == "\udcff/"
    assert list(directory.names()) == ["\udcff/a.jpg", "\udcff/b.jpg"]
    path = tmp_path / "t.zip"
    path.write_bytes(data)
    assert list(ZipRoot(str(path)).read_many(["b.jpg", "a.jpg"])) == [
        ("b.jpg", b"\xff\xd8\xffb"),
        ("a.jpg", b"\xff\xd8\xffa"),
    ]


def test_a_name_repeated_in_an_archive_is_its_last_member_as_in_zipfile(tmp_path):
    from llava_hf.images import ZipRoot

    out = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(out, "w") as zf:
        zf.writestr("x.jpg", b"\xff\xd8\xff first")
        zf.writestr("y.jpg", b"\xff\xd8\xff y")
        zf.writestr("x.jpg", b"\xff\xd8\xff last")
    data = out.getvalue()
    directory = ZipDirectory.from_transport(Bytes(data), "t.zip")
    assert directory.find("x.jpg") == 2
    assert directory.find_many(["y.jpg", "x.jpg"]).tolist() == [1, 2]
    path = tmp_path / "t.zip"
    path.write_bytes(data)
    assert list(ZipRoot(str(path)).read_many(["x.jpg"])) == [("x.jpg", b"\xff\xd8\xff last")]
    assert zipfile.ZipFile(path).read("x.jpg") == b"\xff\xd8\xff last"
