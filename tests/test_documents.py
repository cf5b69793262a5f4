import collections

from lmstream.config import DataArguments
from lmstream.corpus.documents import DocumentStream
from lmstream.corpus.plan import plan_pieces
from lmstream.corpus.sources import resolve_shards


def _all_docs(plan, args, slot, n_slots, epoch=0, split="train", seed=0):
    stream = DocumentStream(plan, args, seed, slot, n_slots, split=split)
    return [d for w in stream.windows(epoch, 0, (0, 0)) for d in w.docs], stream


def _plan(path):
    return plan_pieces(resolve_shards(path), "text")


def test_every_document_exactly_once_across_slots(parquet_dir):
    path, docs = parquet_dir
    plan = _plan(path)
    args = DataArguments(dataset_name=path, dataset_shuffle_buffer=16)
    wanted = collections.Counter(d for d in docs if d.strip())
    for n_slots in (1, 2, 3, 4, 6, 40, 100):   # 5 shards x 7 row groups: uneven splits and more slots than pieces
        got = collections.Counter()
        for slot in range(n_slots):
            got.update(_all_docs(plan, args, slot, n_slots)[0])
        assert got == wanted, n_slots


def test_empty_documents_are_skipped_and_counted(parquet_dir):
    path, docs = parquet_dir
    got, stream = _all_docs(_plan(path), DataArguments(dataset_name=path), 0, 1)
    assert stream.stats["docs_empty"] == sum(1 for d in docs if not d.strip()) > 0
    assert stream.stats["rows_read"] == len(docs)


def test_shuffle_is_deterministic_per_seed_and_epoch(parquet_dir):
    path, docs = parquet_dir
    plan, args = _plan(path), DataArguments(dataset_name=path, dataset_shuffle_buffer=50)
    a, _ = _all_docs(plan, args, 0, 2)
    b, _ = _all_docs(plan, args, 0, 2)
    c, _ = _all_docs(plan, args, 0, 2, seed=1)
    e1, _ = _all_docs(plan, args, 0, 2, epoch=1)
    assert a == b and a != c and a != e1
    assert sorted(a) != a   # really permuted
    unshuffled, _ = _all_docs(plan, DataArguments(dataset_name=path, dataset_shuffle=False), 0, 1)
    assert unshuffled == [d for d in docs if d.strip()]


def test_holdout_is_disjoint_and_deterministic(parquet_dir):
    path, docs = parquet_dir
    plan, args = _plan(path), DataArguments(dataset_name=path, dataset_holdout_fraction=0.2)
    train, st = _all_docs(plan, args, 0, 1)
    held, _ = _all_docs(plan, args, 0, 1, split="holdout")
    held2 = [d for slot in range(3) for d in _all_docs(plan, args, slot, 3, split="holdout")[0]]
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(d for d in docs if d.strip())
    assert sorted(held) == sorted(held2) and 0.1 < len(held) / len(docs) < 0.3
    assert st.stats["docs_heldout"] == len(held)


def test_window_can_be_re_read_identically(parquet_dir):
    path, _ = parquet_dir
    plan, args = _plan(path), DataArguments(dataset_name=path, dataset_shuffle_buffer=9)
    stream = DocumentStream(plan, args, 0, 1, 3)
    windows = list(stream.windows(0, 0, (0, 0)))
    assert windows[-1].last and len(windows) > 3
    for w in windows:
        again = next(DocumentStream(plan, args, 0, 1, 3).windows(0, w.index, w.start))
        assert again.docs == w.docs and again.next == w.next


def test_read_ahead_fetches_the_next_pieces_within_the_budget():
    import threading
    from lmstream.corpus.readahead import ReadAhead
    started, gate = [], threading.Event()

    def read(piece):
        started.append(piece)
        if piece > 0:
            gate.wait(5)
        return f"table-{piece}"
    sizes = {0: 10, 1: 10, 2: 10, 3: 10, 4: 10}
    ahead = ReadAhead(read, sizes.get, budget_bytes=25)
    pieces = list(range(5))
    assert ahead.take(0, pieces) == "table-0"
    assert sorted(ahead.inflight) == [1, 2]          # 20 bytes in flight, a third would exceed 25
    gate.set()
    assert [ahead.take(k, pieces) for k in range(1, 5)] == [f"table-{k}" for k in range(1, 5)]
    assert sorted(started) == pieces                 # each piece read once
    ahead.close()
    off = ReadAhead(read, sizes.get, budget_bytes=0)
    assert off.take(3, pieces) == "table-3" and not off.inflight


def test_read_ahead_asks_each_size_once_over_many_small_pieces():
    """A long stream of small pieces keeps thousands in flight: the budget is kept as a sum, not re-added on every
    take (which made a pass quadratic in the pieces). A piece the reader moved past is dropped from the budget."""
    from lmstream.corpus.readahead import ReadAhead
    asked = []

    def size_of(piece):
        asked.append(piece)
        return 10
    n = 3000
    ahead = ReadAhead(lambda p: f"table-{p}", size_of, budget_bytes=10 * n)
    pieces = list(range(n))
    assert [ahead.take(k, pieces) for k in range(0, n, 2)] == [f"table-{k}" for k in range(0, n, 2)]
    assert len(asked) <= n and ahead.used == 10 * len(ahead.inflight)
    ahead.close()
    small = ReadAhead(lambda p: f"table-{p}", size_of, budget_bytes=30)
    small.take(0, pieces)
    assert list(small.inflight) == [1, 2, 3]
    assert small.take(3, pieces) == "table-3" and list(small.inflight) == [4, 5, 6] and small.used == 30
    small.close()


def test_read_ahead_off_and_on_give_the_same_documents(parquet_dir):
    path, _ = parquet_dir
    plan = _plan(path)
    on, _ = _all_docs(plan, DataArguments(dataset_name=path), 1, 2)
    off, _ = _all_docs(plan, DataArguments(dataset_name=path, dataset_readahead_bytes=0), 1, 2)
    assert on == off and on
