"""The row advice backs off while a thread's rows are read without major page faults (reader.want_advice)."""

import threading
import types

import pyarrow as pa

from llava_hf import reader


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


def test_warm_rows_stop_the_advice_after_clean_probes(monkeypatch):
    _fresh(monkeypatch)
    decisions = [reader.want_advice() for _ in range(100)]
    # 1 (first query after the reset) + probes at queries 16, 32, 48, 64 of the count: warm after the 4th
    probes = [i for i, advised in enumerate(decisions) if not advised]
    assert decisions[0] is True
    assert probes[:4] == [16, 32, 48, 64]
    assert all(not advised for advised in decisions[64:])
    assert decisions.count(True) == 61


def test_a_major_fault_turns_the_advice_back_on_at_once(monkeypatch):
    faults = _fresh(monkeypatch)
    for _ in range(65):
        reader.want_advice()
    assert reader.want_advice() is False  # warm
    faults.count += 3  # the last row missed the page cache
    assert reader.want_advice() is True
    assert [reader.want_advice() for _ in range(16)] == [True] * 15 + [False]  # advising, then a probe


def test_a_fault_during_a_probe_keeps_advising(monkeypatch):
    faults = _fresh(monkeypatch)
    decisions = []
    for _ in range(200):
        decisions.append(reader.want_advice())
        if not decisions[-1]:
            faults.count += 1  # every probe row was cold
    # the first query resets, then queries 1..199 of the count probe at 16, 32, ..., 192 and never warm up
    assert [i for i, advised in enumerate(decisions) if not advised] == list(range(16, 200, 16))


def test_opening_a_lazy_file_resets_to_advising(monkeypatch, tmp_path):
    _fresh(monkeypatch)
    for _ in range(70):
        reader.want_advice()
    assert reader.want_advice() is False
    path = tmp_path / "one.arrow"
    table = pa.table({"x": [1, 2, 3]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    opened = reader.open_lazy(str(path))
    assert opened.num_rows == 3
    assert reader.want_advice() is True


def test_each_thread_keeps_its_own_state(monkeypatch):
    _fresh(monkeypatch)
    for _ in range(70):
        reader.want_advice()
    assert reader.want_advice() is False
    seen = []
    worker = threading.Thread(target=lambda: seen.append(reader.want_advice()))
    worker.start()
    worker.join()
    assert seen == [True]  # a new thread starts out advising
