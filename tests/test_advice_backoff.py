"""The row advice backs off while a thread's rows are found in memory (reader.want_advice / probed)."""

import gc
import threading
import types

import pyarrow as pa

from llava_hf import reader
from llava_hf.pagecache import evict, resident_bytes


class _Faults:
    """Stands in for resource.getrusage: a thread's major page faults, as the test sets them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, who):
        return types.SimpleNamespace(ru_majflt=self.count)


def _fresh(monkeypatch) -> _Faults:
    faults = _Faults()
    monkeypatch.setattr(reader.resource, "getrusage", faults)
    monkeypatch.setattr(reader, "_temperature", reader._Temperature())
    return faults


def _queries(n: int, resident: bool = True) -> list[str]:
    decisions = []
    for _ in range(n):
        decisions.append(reader.want_advice())
        if decisions[-1] == reader.PROBE:
            reader.probed(resident)
    return decisions


def test_warm_rows_stop_the_advice_after_clean_probes(monkeypatch):
    _fresh(monkeypatch)
    decisions = _queries(100)
    # the first query resets the thread's state; counted queries 16, 32, 48, 64 probe; warm after the 4th
    assert [i for i, how in enumerate(decisions) if how == reader.PROBE] == [16, 32, 48, 64]
    assert decisions[:16] == [reader.ADVISE] * 16
    assert decisions[65:] == [reader.SKIP] * 35


def test_a_major_fault_turns_the_advice_back_on_at_once(monkeypatch):
    faults = _fresh(monkeypatch)
    _queries(65)
    assert reader.want_advice() == reader.SKIP
    faults.count += 3  # the last row missed the page cache
    assert reader.want_advice() == reader.ADVISE
    assert _queries(16) == [reader.ADVISE] * 15 + [reader.PROBE]  # advising again, probing again


def test_probes_finding_pages_missing_keep_advising(monkeypatch):
    _fresh(monkeypatch)
    decisions = _queries(200, resident=False)
    assert [i for i, how in enumerate(decisions) if how != reader.ADVISE] == list(range(16, 200, 16))


def test_opening_a_lazy_file_resets_to_advising(monkeypatch, tmp_path):
    _fresh(monkeypatch)
    _queries(70)
    assert reader.want_advice() == reader.SKIP
    path = tmp_path / "one.arrow"
    table = pa.table({"x": [1, 2, 3]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    opened = reader.open_lazy(str(path))
    assert opened.num_rows == 3
    assert reader.want_advice() == reader.ADVISE


def test_each_thread_keeps_its_own_state(monkeypatch):
    _fresh(monkeypatch)
    _queries(70)
    assert reader.want_advice() == reader.SKIP
    seen = []
    worker = threading.Thread(target=lambda: seen.append(reader.want_advice()))
    worker.start()
    worker.join()
    assert seen == [reader.ADVISE]  # a new thread starts out advising


def test_a_probe_asks_only_for_missing_pages_and_says_whether_all_were_there(tmp_path, monkeypatch):
    n = 2_000
    table = pa.table({"id": [f"id{i:05d}" for i in range(n)], "blob": [bytes([i % 256]) * 3_000 for i in range(n)]})
    path = tmp_path / "blobs.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema, options=None) as writer:
        writer.write_table(table, max_chunksize=500)
    evict(path)
    lazy = reader.open_lazy(str(path))
    row = lazy.slice(1_234, 1)
    asked: list[int] = []
    real = reader._madvise
    monkeypatch.setattr(
        reader, "_madvise", lambda address, length, advice: asked.append(length) or real(address, length, advice)
    )
    assert reader.advise_rows(row, probe=True) is False  # cold: the row's pages were asked for
    cold = list(asked)
    assert sum(cold) >= 3_000  # at least the row's blob (the id column's pages may be in from the open)
    row.column("blob")[0].as_py()  # read it: its pages are now in memory
    asked.clear()
    assert reader.advise_rows(row, probe=True) is True
    assert asked == []
    assert reader.advise_rows(row) is False  # not probing: every request is made again
    assert len(asked) == 2  # the id column whole, and the row's blob with its offsets
    assert set(cold) <= set(asked)  # the probe made a subset of the requests: those with a page missing
    assert resident_bytes(path) < 200_000  # the rows' pages and the headers, not the 6 MB file
    del lazy, row
    gc.collect()
