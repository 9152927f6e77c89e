"""Hostile inputs and damaged caches (issue 13): no hang, no bare traceback, nothing served unprepared.

Cases that could hang or exhaust memory when broken run in a child process with a timeout and a memory
limit, so that a regression fails the test instead of the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, jpeg, write_json

from llava_hf import images as images_module
from llava_hf.errors import BadImage
from llava_hf.images import open_root

N = 30  # records in the fake detail_23k


def turns() -> list[dict]:
    return [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A picture."}]


def image_name(i: int) -> str:
    return f"{i:012d}.jpg"


@pytest.fixture
def fake(tmp_path) -> dict:
    """detail_23k with N records r00..r29, each with its own JPEG; returns the load options."""
    data_dir, image_dir = tmp_path / "data", tmp_path / "coco" / "train2017"
    image_dir.mkdir(parents=True)
    records = [{"id": f"r{i:02d}", "image": image_name(i), "conversations": turns()} for i in range(N)]
    write_json(data_dir / "detail_23k.json", records)
    for i in range(N):
        (image_dir / image_name(i)).write_bytes(jpeg(i))
    return {"data_dir": str(data_dir), "image_dir": str(image_dir), "cache_dir": str(tmp_path / "cache")}


CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
import llava_hf

def run(options):
    try:
        if options.pop("verify", False):
            report = llava_hf.verify("detail_23k", num_proc=1, progress=False, decode=False, **options)
            return {{"counts": dict(report.counts), "problems": [str(p) for p in report.problems]}}
        ds = llava_hf.load_dataset("detail_23k", **options)
        return {{"ids": list(ds["id"]), "report": llava_hf.prepare_report(ds)["skipped"]}}
    except Exception as e:
        return {{"error": type(e).__name__, "message": str(e)}}

print(json.dumps([run(options) for options in json.loads(sys.argv[1])]))
"""


def run_child(*runs: dict, memory: int = 3 << 30, timeout: float = 120) -> list[dict]:
    """Each prepare (or verify, with "verify": True) of `runs`, in one child process limited to `memory`
    bytes of address space: a hang fails the test by its timeout, a runaway read by the limit."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD.format(memory=memory)), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ids_without(*missing: int) -> list[str]:
    return [f"r{i:02d}" for i in range(N) if i not in missing]


# --- 1. image roots read regular files only, bounded --------------------------------------------------------


def _fifo(fake) -> Path:
    path = Path(fake["image_dir"]) / image_name(3)
    path.unlink()
    os.mkfifo(path)
    return path


def _dev_zero(fake) -> Path:
    path = Path(fake["image_dir"]) / image_name(3)
    path.unlink()
    path.symlink_to("/dev/zero")
    return path


KINDS = {"fifo": (_fifo, "a FIFO (named pipe)"), "dev_zero": (_dev_zero, "a character device")}


@pytest.mark.parametrize("kind", KINDS)
def test_non_regular_image_is_refused_skipped_and_verified(fake, kind):
    make, what = KINDS[kind]
    path = make(fake)
    problem = f"image file {path} is {what}, not a regular file; only regular files are read"
    verify = {"data_dir": fake["data_dir"], "image_dir": fake["image_dir"], "verify": True}
    raised, skipped, verified = run_child(fake, {**fake, "on_bad_image": "skip"}, verify)
    assert raised == {"error": "SourceError", "message": f"detail_23k.json: record 3 (id='r03'): {problem}"}
    assert skipped["ids"] == ids_without(3)
    assert skipped["report"]["counts"] == {"not_a_file": 1}
    assert [(e["index"], e["id"]) for e in skipped["report"]["examples"]["not_a_file"]] == [(3, "r03")]
    assert skipped["report"]["rows"] == [[3, image_name(3)]]
    assert verified == {
        "counts": {"not_a_file": 1},
        "problems": [f"detail_23k.json: record 3 (id='r03'): not_a_file: {problem}"],
    }


def test_reads_are_bounded_whatever_stat_says(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_IMAGE_BYTES", 1000)
    path = tmp_path / "grown.jpg"
    path.write_bytes(jpeg(1)[:3] + b"\0" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BadImage) as info:
            images_module._read_bounded(fd, 0, str(path))  # a size of 0, as /proc files and /dev/zero report
    finally:
        os.close(fd)
    assert (info.value.reason, str(info.value)) == (
        "too_large",
        f"image file {path} has more than the 1,000 bytes allowed",
    )
    # and the bytes of an ordinary file come back whole, whatever size was expected
    path.write_bytes(b"x" * 999)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert images_module._read_bounded(fd, 10, str(path)) == b"x" * 999
    finally:
        os.close(fd)


def test_symlinked_image_file_is_still_read(fake):
    target = Path(fake["image_dir"]).parent / "elsewhere.jpg"
    target.write_bytes(jpeg(77))
    link = Path(fake["image_dir"]) / image_name(4)
    link.unlink()
    link.symlink_to(target)
    assert open_root(fake["image_dir"]).read(image_name(4)) == (image_name(4), jpeg(77))


def test_not_an_image_message_never_quotes_the_bytes(tmp_path):
    (tmp_path / "passwd.jpg").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    root = open_root(str(tmp_path))
    for method in (root.read, root.locate):
        with pytest.raises(BadImage) as info:
            method("passwd.jpg")
        assert str(info.value) == (
            f"image file {tmp_path}/passwd.jpg (32 bytes) is not an image: it starts with no known image signature"
        )


SURROGATE = "000000000003\ud83d.jpg"


def _surrogate_name(fake) -> None:
    path = Path(fake["data_dir"]) / "detail_23k.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    records[3]["image"] = SURROGATE
    # ensure_ascii keeps the lone surrogate as the escape \ud83d: valid JSON, as a hostile file has it
    path.write_text(json.dumps(records), encoding="utf-8")


BAD_NAME = (
    "image path '000000000003\\\\ud83d.jpg' holds an unpaired UTF-16 surrogate at character 12; expected UTF-8 text"
)


def test_unencodable_image_name_is_refused_skipped_and_verified(fake):
    _surrogate_name(fake)
    verify = {"data_dir": fake["data_dir"], "image_dir": fake["image_dir"], "verify": True}
    raised, skipped, verified = run_child(fake, {**fake, "on_bad_image": "skip"}, verify)
    assert raised == {"error": "SourceError", "message": f"detail_23k.json: record 3 (id='r03'): {BAD_NAME}"}
    assert skipped["ids"] == ids_without(3)
    assert skipped["report"]["counts"] == {"bad_name": 1}
    assert verified["counts"]["bad_name"] == 1
    assert f"detail_23k.json: record 3 (id='r03'): bad_name: {BAD_NAME}" in verified["problems"]


# --- 2. a record over the per-record limit is called that --------------------------------------------------


def test_oversized_valid_record_is_called_too_large(tmp_path, monkeypatch):
    from llava_hf import sources
    from llava_hf.errors import SourceError

    monkeypatch.setattr(sources, "_MAX_RECORD", 1 << 20)
    path = tmp_path / "x.json"
    big = {"id": "b", "conversations": [{"from": "human", "value": "y" * (6 << 20)}]}  # past one read of the scan
    path.write_text(json.dumps([{"id": "a"}, big, {"id": "c"}]), encoding="utf-8")
    with pytest.raises(SourceError) as info:
        sources.index_json_array(str(path))
    assert str(info.value) == (
        "x.json: record 1: larger than the 1 MiB limit per record (it starts at byte 14, the record after "
        "id='a'); no LLaVA record comes near it: remove or split it"
    )


def test_malformed_record_in_a_big_file_is_still_malformed(tmp_path, monkeypatch):
    from llava_hf import sources
    from llava_hf.errors import SourceError

    monkeypatch.setattr(sources, "_MAX_RECORD", 1 << 20)
    path = tmp_path / "x.json"
    filler = [{"id": str(i), "conversations": [{"from": "human", "value": "z" * 1000}]} for i in range(3000)]
    path.write_text('[{"id": "a"}, {"id": "b" "c"}, ' + json.dumps(filler)[1:], encoding="utf-8")
    with pytest.raises(SourceError) as info:
        sources.index_json_array(str(path))
    assert (
        str(info.value)
        == "x.json: record 1: malformed JSON at byte 25 (the record after id='a'): Expecting ',' delimiter"
    )
    # a file cut inside a record is truncated, not too large
    path.write_text('[{"id": "a"}, {"id": "b", "v": "' + "w" * 100, encoding="utf-8")
    with pytest.raises(SourceError) as info:
        sources.index_json_array(str(path))
    assert str(info.value) == (
        "x.json: record 1: malformed JSON at byte 31 (the record after id='a'): Unterminated string starting at"
    )


# --- 3. errors a user meets reach the caller with the file and the remedy ---------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def entries(cache_dir: Path) -> list[str]:
    """Every folder of a prepared or half-prepared entry under `cache_dir`, and every dataset_info.json."""
    found = []
    for folder, subfolders, files in os.walk(cache_dir):
        found += [os.path.join(folder, s) for s in subfolders if s.endswith(".incomplete")]
        found += [os.path.join(folder, f) for f in files if f in ("dataset_info.json", "llava_hf_report.json")]
    return found


@pytest.mark.parametrize("num_proc", [None, 2])
def test_disk_full_names_the_folder_and_the_remedy(fake, small_disk, num_proc):
    import llava_hf
    from llava_hf.failures import PrepareError

    # 30 images of 100 KB (a JPEG signature and padding: nothing is decoded) do not fit in 1 MiB
    for i in range(N):
        (Path(fake["image_dir"]) / image_name(i)).write_bytes(jpeg(i) + b"\0" * 100_000)
    cache = small_disk / "cache"
    builder = llava_hf.load_builder(
        "detail_23k", data_dir=fake["data_dir"], image_dir=fake["image_dir"], cache_dir=cache
    )
    with pytest.raises(PrepareError) as info:
        builder.download_and_prepare(num_proc=num_proc)
    assert str(info.value) == (
        f"detail_23k: preparing failed on {builder.cache_dir}: No space left on device; free space there, or "
        "pass another cache_dir, and run again (nothing was kept in the cache)"
    )
    assert info.value.errno == 28
    assert entries(cache) == []


def test_lock_error_explained_is_never_its_own_cause():
    from llava_hf.locking import explain_lock_error

    error = FileNotFoundError(2, "No such file or directory", "/x/y.lock")
    try:
        try:
            raise error
        except OSError as e:
            raise explain_lock_error(e) from e
    except OSError as raised:
        assert raised is not error
        assert raised.__cause__ is error
        assert (type(raised), str(raised)) == (FileNotFoundError, "[Errno 2] No such file or directory: '/x/y.lock'")


INTERRUPTED = """
import json, sys, time
import llava_hf
from llava_hf import images

read = images.FolderRoot._read

def slow_read(self, name):
    time.sleep(0.4)  # a slow mount: the prepare is still running when Ctrl-C comes
    return read(self, name)

images.FolderRoot._read = slow_read
options = json.loads(sys.argv[1])
try:
    llava_hf.load_dataset("detail_23k", **options)
    print(json.dumps({"error": None}))
except BaseException as e:
    print(json.dumps({"error": type(e).__name__, "keyboard": isinstance(e, KeyboardInterrupt), "message": str(e)}))
"""


@pytest.mark.parametrize(("num_proc", "delay"), [(None, 0.5), (2, 0.3), (2, 1.5)])
def test_ctrl_c_stops_the_prepare_and_its_workers(fake, num_proc, delay):
    import signal
    import time

    import llava_hf

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    options = {**fake, "num_proc": num_proc}
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, json.dumps(options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's: Ctrl-C reaches every process
    )
    try:
        deadline = time.monotonic() + 60
        while not any(path.endswith(".incomplete") for path in entries(Path(fake["cache_dir"]))):
            assert time.monotonic() < deadline, "the prepare never started writing"
            assert child.poll() is None, child.stderr.read()[-3000:]
            time.sleep(0.05)
        time.sleep(delay)
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    result = json.loads(out.strip().splitlines()[-1])
    builder = llava_hf.load_builder(
        "detail_23k", data_dir=fake["data_dir"], image_dir=fake["image_dir"], cache_dir=fake["cache_dir"]
    )
    assert result == {
        "error": "PrepareInterrupted",
        "keyboard": True,
        "message": f"detail_23k: preparing was interrupted (Ctrl-C); nothing was kept in {builder.cache_dir}, the "
        "next run prepares again",
    }
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker or queue manager is left running
        os.killpg(child.pid, 0)
    assert entries(Path(fake["cache_dir"])) == []


# --- 4. integrity of prepared data ---------------------------------------------------------------------------


def prepared(fake, **kw):
    import llava_hf

    ds = llava_hf.load_dataset("detail_23k", **fake, **kw)
    return ds, os.path.dirname(ds.cache_files[0]["filename"])


def test_prepare_records_size_and_xxh3_128_of_every_file(fake):
    import xxhash

    import llava_hf

    ds, folder = prepared(fake)
    files = llava_hf.prepare_report(ds)["files"]
    written = sorted(f for f in os.listdir(folder) if f != "llava_hf_report.json" and not f.endswith(".lock"))
    assert sorted(files) == written == ["LICENSE", "dataset_info.json", "llava_hf-train.arrow"]
    for name, entry in files.items():
        data = (Path(folder) / name).read_bytes()
        assert (entry["size"], entry["xxh3_128"]) == (len(data), xxhash.xxh3_128_hexdigest(data))
    # 16 shards (sources.MIN_SHARDS), one record batch each
    assert [b["rows"] for b in files["llava_hf-train.arrow"]["batches"]] == [
        (i + 1) * N // 16 - i * N // 16 for i in range(16)
    ]
    check = llava_hf.verify_prepared(ds)
    assert (check.intact, check.problems, check.files) == (True, [], 3)


def flip_image_byte(arrow: Path, image: bytes) -> None:
    data = bytearray(arrow.read_bytes())
    at = data.index(image) + len(image) // 2
    assert data.count(image) == 1
    data[at] ^= 0x01
    arrow.write_bytes(bytes(data))


def test_verify_prepared_names_the_file_and_the_row_of_a_flipped_bit(fake, capsys):
    import llava_hf
    from llava_hf.cli import main

    ds, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    cli = ["verify", "--prepared", "detail_23k", "--data-dir", fake["data_dir"], "--image-dir", fake["image_dir"]]
    cli += ["--cache-dir", fake["cache_dir"]]
    assert main(cli) == 0
    assert capsys.readouterr().out.strip().endswith("intact (every xxh3_128 matches the prepare report)")
    flip_image_byte(arrow, jpeg(7))
    check = llava_hf.verify_prepared(ds)
    problem = f"{arrow}: row 7 (id='r07'): its image bytes differ from the prepared ones (record batch 4)"
    assert (check.intact, check.problems, check.damaged_rows) == (False, [problem], [7])
    assert main(cli) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1:] == [f"  {problem}"]
    assert out.splitlines()[0].endswith(" bytes checked: DAMAGED, 1 problem")


def test_verify_prepared_of_damaged_text_names_the_rows_of_its_batch(fake):
    import llava_hf

    ds, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    data = bytearray(arrow.read_bytes())
    at = data.index(b"A picture.")
    data[at] ^= 0x20  # "a picture." in row 0 (the first record batch): the text changed, no image did
    arrow.write_bytes(bytes(data))
    check = llava_hf.verify_prepared(ds)
    assert check.problems == [f"{arrow}: rows 0..0 (record batch 0) differ from the prepared bytes"]
    assert check.damaged_rows == [0]


def test_reusing_a_truncated_arrow_file_names_it_and_the_remedy(fake):
    import llava_hf

    ds, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    size = arrow.stat().st_size
    del ds
    os.truncate(arrow, size - 100)
    with pytest.raises(llava_hf.DamagedEntry) as info:
        llava_hf.load_dataset("detail_23k", **fake)
    assert str(info.value) == (
        f"detail_23k: the prepared entry is damaged: {arrow} has {size - 100:,} bytes, {size:,} when it was "
        f"prepared (truncated); prepare it again with download_mode='force_redownload', or delete {folder}"
    )
    # the remedy works
    ds = llava_hf.load_dataset("detail_23k", **fake, download_mode="force_redownload")
    assert ds["id"] == ids_without()
    assert llava_hf.verify_prepared(ds).intact


def test_reusing_a_truncated_dataset_info_names_it(fake):
    import llava_hf

    ds, folder = prepared(fake)
    info_path = Path(folder) / "dataset_info.json"
    text = info_path.read_text(encoding="utf-8")
    info_path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(llava_hf.DamagedEntry) as info:
        llava_hf.load_dataset("detail_23k", **fake)
    message = str(info.value)
    assert message.startswith(f"detail_23k: the prepared entry is damaged: {info_path} is not valid JSON (at byte ")
    assert message.endswith(f"; truncated?); delete {folder} and prepare again")


# --- 5. a reused entry re-checks its skipped rows; the source memo notices in-place edits -------------------


def test_reused_entry_says_when_skipped_images_came_back(fake, monkeypatch):
    import llava_hf
    from llava_hf.images import FolderRoot

    folder = Path(fake["image_dir"])
    kept = {i: (folder / image_name(i)).read_bytes() for i in (3, 11)}
    for i in kept:
        (folder / image_name(i)).unlink()
    ds = llava_hf.load_dataset("detail_23k", **fake, on_bad_image="skip")
    assert ds["id"] == ids_without(3, 11)
    assert llava_hf.prepare_report(ds)["skipped"]["rows"] == [[3, image_name(3)], [11, image_name(11)]]

    read = []
    original = FolderRoot._read

    def counting(self, name):
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(FolderRoot, "_read", counting)
    with warnings_recorded() as caught:  # still missing: nothing to say
        llava_hf.load_dataset("detail_23k", **fake, on_bad_image="skip")
    # a missing COCO name is also tried with the train2014/val2014 prefixes
    tried = {i: [f"{prefix}{image_name(i)}" for prefix in ("", "COCO_train2014_", "COCO_val2014_")] for i in (3, 11)}
    assert (caught, sorted(read)) == ([], sorted(tried[3] + tried[11]))
    read.clear()
    (folder / image_name(11)).write_bytes(kept[11])
    with pytest.warns(UserWarning) as caught:
        ds = llava_hf.load_dataset("detail_23k", **fake, on_bad_image="skip")
    assert [str(w.message) for w in caught] == [
        f"detail_23k: 1 of the 2 rows skipped when this entry was prepared now have their image in {folder} (e.g. "
        f"record 11, '{image_name(11)}'); the entry lacks them: pass download_mode='force_redownload' to prepare "
        "them in"
    ]
    assert sorted(read) == sorted([*tried[3], image_name(11)])  # the skipped rows' images, no other
    assert ds["id"] == ids_without(3, 11)


def warnings_recorded():
    import warnings

    class Recorder:
        def __enter__(self):
            self._context = warnings.catch_warnings(record=True)
            self.caught = self._context.__enter__()
            warnings.simplefilter("always")
            return self.caught

        def __exit__(self, *exc):
            return self._context.__exit__(*exc)

    return Recorder()


def test_source_edited_in_place_with_mtime_restored_is_noticed(fake):
    import llava_hf

    path = Path(fake["data_dir"]) / "detail_23k.json"
    assert llava_hf.load_dataset("detail_23k", **fake)["id"][5] == "r05"
    stat = path.stat()
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"r05"', '"x05"'), encoding="utf-8")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # cp -p, rsync -t, a restore
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert llava_hf.load_dataset("detail_23k", **fake)["id"][5] == "x05"


def test_lazy_open_of_a_truncated_arrow_file_names_it(fake):
    from llava_hf.reader import open_lazy

    _, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    os.truncate(arrow, arrow.stat().st_size - 100)
    with pytest.raises(OSError) as info:
        open_lazy(str(arrow))
    message = str(info.value)
    assert message.startswith(f"{arrow} is damaged or incomplete (")
    assert message.endswith("); prepare it again with download_mode='force_redownload'")


def _sleep_ignoring_sigint() -> None:
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(60)


def test_interrupt_kills_the_prepares_children_when_unwinding_stalls(monkeypatch):
    import signal
    import time

    import multiprocess

    from llava_hf import failures

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by the test runner here")
    monkeypatch.setattr(failures, "INTERRUPT_GRACE_SECONDS", 0.3)
    context = multiprocess.get_context("fork")
    before = context.Process(target=_sleep_ignoring_sigint)
    before.start()
    try:
        with failures.stop_workers_on_interrupt():
            worker = context.Process(target=_sleep_ignoring_sigint)
            worker.start()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            worker.join(timeout=5)  # a stalled unwinding: the worker is killed after the grace period
            assert worker.exitcode == -signal.SIGKILL
        assert before.is_alive()  # a process the prepare did not start is spared
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        before.kill()
        before.join()


def test_verify_prepared_numbers_rows_across_the_shards_of_num_proc(fake):
    import llava_hf

    ds, folder = prepared(fake, num_proc=2)
    arrows = sorted(f for f in os.listdir(folder) if f.endswith(".arrow"))
    assert arrows == ["llava_hf-train-00000-of-00002.arrow", "llava_hf-train-00001-of-00002.arrow"]
    assert llava_hf.verify_prepared(ds).intact
    second = Path(folder) / arrows[1]
    flip_image_byte(second, jpeg(20))
    check = llava_hf.verify_prepared(ds)
    batches = llava_hf.prepare_report(ds)["files"][arrows[0]]["batches"]
    rows_before = sum(b["rows"] for b in batches)
    assert rows_before < 20
    assert ds[20]["id"] == "r20"
    assert check.damaged_rows == [20]
    assert len(check.problems) == 1
    assert check.problems[0].startswith(f"{second}: row 20 (id='r20'): its image bytes differ from the prepared ones")


def test_read_only_cache_dir_names_it_and_the_remedy(fake, tmp_path):
    import llava_hf

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "read_only"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        with pytest.raises(OSError) as info:
            llava_hf.load_dataset("detail_23k", **{**fake, "cache_dir": str(mount / "cache")})
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert str(info.value) == (
        f"[Errno 30] Read-only file system (the file system is read-only: pass a writable cache_dir): "
        f"'{mount / 'cache'}'"
    )


# --- inputs a review found: named by file and record, never a bare ValueError ------------------------------


def test_an_integer_too_long_for_python_names_its_record(fake):
    import llava_hf
    from llava_hf import SourceError

    path = Path(fake["data_dir"]) / "detail_23k.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    records[4]["score"] = 0  # a placeholder, then the literal: more digits than int() converts (4,300)
    path.write_text(json.dumps(records).replace('"score": 0', '"score": ' + "9" * 4301), encoding="utf-8")
    at = path.read_bytes().index(b'{"id": "r04"')
    with pytest.raises(SourceError) as caught:
        llava_hf.load_dataset("detail_23k", **fake)
    assert str(caught.value) == (
        f"detail_23k.json: record 4: record at byte {at} (the record after id='r03') cannot be decoded: "
        "Exceeds the limit (4300 digits) for integer string conversion: value has 4301 digits; use "
        "sys.set_int_max_str_digits() to increase the limit"
    )
    assert (caught.value.index, caught.value.reason) == (4, None)
    assert not list(Path(fake["cache_dir"]).rglob("*.arrow"))
