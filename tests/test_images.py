"""images.py: containment, header checks, folder and zip roots, COCO train2014 aliases."""

from __future__ import annotations

import zipfile

import pytest
from conftest import jpeg

from llava_hf.catalog import COCO_FLAT_ALIASES
from llava_hf.errors import BadImage
from llava_hf.images import FolderRoot, ZipRoot, open_root, safe_name, sniff_format


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../secret.jpg",
        "a/../../b.jpg",
        "http://x/y.jpg",
        "file:///etc/passwd",
        "C:\\x.jpg",
        "C:/x.jpg",
        "\\\\server\\share\\x.jpg",
        "",
        "a\x00b.jpg",
        "s3://bucket/x.jpg",
    ],
)
def test_unsafe_names_are_refused(name):
    with pytest.raises(BadImage) as info:
        safe_name(name)
    assert info.value.reason == "unsafe_path"


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a.jpg", "a.jpg"),
        ("./coco/x.jpg", "coco/x.jpg"),
        ("a\\b.jpg", "a/b.jpg"),
        ("a//b.jpg", "a/b.jpg"),
        ("..a.jpg", "..a.jpg"),
    ],
)
def test_safe_names(name, clean):
    assert safe_name(name) == clean


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"GIF87a\x01\x00", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"BM6\x00\x00\x00", "BMP"),
        (b"II*\x00\x08\x00", "TIFF"),
        (b"<html><body>", None),
        (b"", None),
    ],
)
def test_sniff_format(head, fmt):
    assert sniff_format(head) == fmt


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(jpeg(1))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_bytes(b"<html>not found</html>")
    (tmp_path / "COCO_train2014_000000000042.jpg").write_bytes(jpeg(2))
    (tmp_path / "dir.jpg").mkdir()
    return tmp_path


def test_folder_reads_bytes_as_is(folder):
    root = open_root(str(folder))
    assert isinstance(root, FolderRoot)
    assert root.read("ok.jpg") == ("ok.jpg", jpeg(1))
    assert root.locate("ok.jpg") == str(folder / "ok.jpg")


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("nope.jpg", "missing", "image 'nope.jpg' not found under {root}"),
        ("empty.jpg", "empty", "image file {root}/empty.jpg is empty (0 bytes)"),
        ("page.jpg", "not_an_image", "image file {root}/page.jpg is not an image (starts with b'<html>no')"),
        ("../ok.jpg", "unsafe_path", "image path '../ok.jpg' leaves the image root ('..')"),
        ("dir.jpg", "unreadable", "image file {root}/dir.jpg cannot be read: Is a directory"),
    ],
)
def test_folder_bad_images(folder, name, reason, detail):
    root = open_root(str(folder))
    for method in (root.read, root.locate):
        with pytest.raises(BadImage) as info:
            method(name)
        assert info.value.reason == reason
        assert str(info.value) == detail.format(root=folder)


def test_train2014_names_are_found_and_remembered(folder):
    root = open_root(str(folder), COCO_FLAT_ALIASES)
    assert root.read("000000000042.jpg") == ("COCO_train2014_000000000042.jpg", jpeg(2))
    assert root.candidates("000000000042.jpg")[0] == (0, "COCO_train2014_000000000042.jpg")
    with pytest.raises(BadImage) as info:
        root.read("000000000043.jpg")
    assert str(info.value) == (
        f"image '000000000043.jpg' not found under {folder} "
        "(also tried '000000000043.jpg', 'COCO_val2014_000000000043.jpg')"
    )


def test_zip_root(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("00453/004539375.jpg", jpeg(3))
        zf.writestr("00453/empty.jpg", b"")
        zf.writestr("00453/", b"")
    root = open_root(str(path))
    assert isinstance(root, ZipRoot)
    assert root.read("00453/004539375.jpg") == ("00453/004539375.jpg", jpeg(3))
    assert root.locate("00453/004539375.jpg") == f"zip://00453/004539375.jpg::{path}"
    for name, reason in [
        ("00453/empty.jpg", "empty"),
        ("00453", "missing"),
        ("00453/", "missing"),
        ("x.jpg", "missing"),
    ]:
        with pytest.raises(BadImage) as info:
            root.read(name)
        assert info.value.reason == reason


def test_zip_root_pickles_without_its_handle(tmp_path):
    import pickle

    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.jpg", jpeg(4))
    root = open_root(str(path))
    root.read("a.jpg")
    clone = pickle.loads(pickle.dumps(root))
    assert clone._transport is None and clone._directory is not None
    assert clone.read("a.jpg") == ("a.jpg", jpeg(4))


def test_unreadable_zip(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(BadImage) as info:
        open_root(str(path)).read("a.jpg")
    assert info.value.reason == "unreadable"
    assert str(info.value).startswith(f"image archive {path} cannot be opened")


def test_zip_members_stored_deflated_and_corrupt(tmp_path):
    path = tmp_path / "images.zip"
    picture = jpeg(5)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("stored.jpg", picture, compress_type=zipfile.ZIP_STORED)
        zf.writestr("deflated.jpg", picture, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("bzip.jpg", picture, compress_type=zipfile.ZIP_BZIP2)
        info = zipfile.ZipInfo("extra.jpg")
        info.extra = b"\xca\xfe\x04\x00abcd"  # an extra field in the local header
        zf.writestr(info, picture)
        zf.writestr("page.jpg", b"<html>" * 100, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("broken.jpg", picture)
    data = bytearray(path.read_bytes())
    at = data.index(picture, data.index(b"broken.jpg"))
    data[at + 100] ^= 0xFF  # one flipped byte in the member's data
    path.write_bytes(bytes(data))
    root = open_root(str(path))
    results = list(root.read_many(["stored.jpg", "deflated.jpg", "bzip.jpg", "extra.jpg", "page.jpg", "broken.jpg"]))
    assert [r[1] for r in results[:4]] == [picture] * 4
    assert (results[4].reason, results[5].reason) == ("not_an_image", "unreadable")
    assert str(results[5]) == f"broken.jpg in {path} is corrupt (size or CRC differs from the zip directory)"
