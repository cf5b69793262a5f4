import numpy as np

from lmstream.packing import BlockPacker, pad_document


def _docs(lengths, start=0):
    ids = [np.arange(start + 1000 * i, start + 1000 * i + n, dtype=np.int32) for i, n in enumerate(lengths)]
    return ids


def test_blocks_are_the_concatenation_with_carry_over():
    rng = np.random.default_rng(0)
    packer, out, everything = BlockPacker(16), [], []
    for batch in range(20):
        lengths = rng.integers(1, 40, size=rng.integers(1, 6))
        ids = _docs(lengths, start=batch * 100000)
        everything.extend(ids)
        refs = [(("w", batch), j) for j in range(len(ids))]
        for block, *_ in packer.feed(np.concatenate(ids), lengths, lengths * 2, refs):
            out.append(block)
    flat = np.concatenate(everything)
    got = np.concatenate(out)
    assert len(got) == len(flat) // 16 * 16
    assert np.array_equal(got, flat[: len(got)])
    assert packer.drop_remainder() == len(flat) % 16


def test_next_position_points_at_the_next_token():
    lengths = np.array([5, 20, 3, 8])
    ids = _docs(lengths)
    flat = np.concatenate(ids)
    refs = [("w", j) for j in range(4)]
    res = BlockPacker(8).feed(flat, lengths, lengths, refs)
    assert len(res) == 4   # 36 tokens -> 4 blocks, 4 carried
    for b, (block, ref, off, ndocs, nbytes) in enumerate(res):
        nxt = (b + 1) * 8
        doc = int(np.searchsorted(np.cumsum(lengths), nxt, side="right"))
        if doc < 4:
            assert ref == ("w", doc) and off == nxt - (np.cumsum(lengths)[doc - 1] if doc else 0)
    assert [r[3] for r in res] == [1, 0, 0, 2]   # documents ending inside each block (ends 5, 25, 28)
    assert sum(r[4] for r in res) == 5 + 20 + 3


def test_pad_document_truncates_and_masks():
    ids, labels, mask, cut = pad_document(np.arange(1, 6), 8, pad_id=0)
    assert ids.tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert labels.tolist() == [1, 2, 3, 4, 5, -100, -100, -100] and mask.sum() == 5 and cut == 0
    ids, labels, mask, cut = pad_document(np.arange(1, 12), 8, pad_id=0)
    assert ids.tolist() == list(range(1, 9)) and cut == 3 and mask.sum() == 8
