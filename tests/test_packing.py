import numpy as np

from lmstream.tokens.packing import BlockPacker, pad_document, Part


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
    for b, (block, ref, off, ndocs, nbytes, _) in enumerate(res):
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


def test_provenance_rebuilds_every_block_from_its_documents():
    """Each block's segments (shard, row group, row, token range) give back exactly its tokens, EOS included,
    across carry-over, empty entries and parts of a document that start past its first token."""
    rng = np.random.default_rng(0)
    packer, docs, seen = BlockPacker(16), {}, 0
    for feed in range(40):
        lens = rng.integers(0, 40, rng.integers(1, 5))
        ids, refs, origins = [], [], []
        for j, n in enumerate(lens):
            base = int(rng.integers(0, 3)) if n else 0   # a part beginning at token `base` of its document
            key = (feed, j)
            docs[key] = np.arange(base + n) + 1000 * len(docs)
            ids.append(docs[key][base:])
            refs.append(Part(key, base, True))
            origins.append((feed, j, 7))
        out = packer.feed(np.concatenate(ids).astype(np.int32), lens.astype(np.int64), lens, refs, np.array(origins))
        for block, *_, prov in out:
            assert prov.shape[1] == 6 and (prov[:, 0] == 0).all() and (prov[:, 3] == 7).all()
            rebuilt = np.concatenate([docs[(s, g)][a:b] for _, s, g, _, a, b in prov])
            assert np.array_equal(rebuilt, block)
            seen += 1
    assert seen > 50


def test_no_origins_no_provenance():
    out = BlockPacker(4).feed(np.arange(9, dtype=np.int32), np.array([9]), [9], [("w", 0)])
    assert [p for *_, p in out] == [None, None]
