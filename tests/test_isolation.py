"""--dataset_document_attention isolated: position_ids that restart at each document of a packed block, so that
no token attends to another document (lmstream.tokens.packing.document_positions,
lmstream.training.models.isolate_documents)."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import lmstream
from lmstream.config import ConfigError
from lmstream.tokens.packing import document_positions
from lmstream.training.models import as_configured, isolate_documents
from conftest import TINY_MODEL, make_docs, train_fed, write_parquet

BLOCK = 64


def test_positions_restart_at_the_eos_that_begins_each_document():
    eos = 9
    got = document_positions(np.array([[5, 5, 9, 4, 4, 4, 9, 3], [9, 1, 1, 1, 1, 1, 1, 9]]), eos)
    assert got.tolist() == [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5, 6, 0]]
    assert document_positions(np.arange(6), eos).tolist() == list(range(6))   # one document: arange
    with pytest.raises(ConfigError, match="dataset_document_attention='causal' must be shared or isolated"):
        lmstream.DataArguments(dataset_name="x", dataset_document_attention="causal")


def _model(impl):
    cfg = AutoConfig.from_pretrained(TINY_MODEL, n_layer=2, n_embd=64, n_head=2, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl).to(torch.float64)
    isolate_documents(model)
    return model.train()


def _blocks(folder, tokenizer, mode, n):
    args = lmstream.DataArguments(dataset_name=folder, dataset_block_size=BLOCK, dataset_document_attention=mode)
    return [s for s, _ in zip(lmstream.build_pipeline(args, tokenizer, seed=0), range(n))]


def _segments_alone(model, ids, rows):
    """The summed loss of each target of a block when each document runs through the model alone. The segments
    come from the block's provenance (what the packer put there), not from its EOS tokens: a document's piece ends
    with its EOS, which begins the next document's segment as its beginning-of-text."""
    ends = np.cumsum([r[5] - r[4] for r in rows])
    assert ends[-1] == len(ids)
    starts = [0] + [int(e) - 1 for e in ends[:-1]]
    total = torch.zeros((), dtype=torch.float64)
    for s, e in zip(starts, starts[1:] + [len(ids)]):
        logits = model(input_ids=ids[s:e][None]).logits[0]
        targets = ids[s + 1:e + 1]
        total += torch.nn.functional.cross_entropy(logits[:len(targets)], targets, reduction="sum")
    return total, len(starts)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_an_isolated_block_trains_as_its_documents_one_by_one(tmp_path, tokenizer, impl):
    write_parquet(tmp_path / "pq", make_docs(120, seed=2), shards=2, rows_per_group=10)
    model = _model(impl)
    isolated, shared = _blocks(str(tmp_path / "pq"), tokenizer, "isolated", 12), _blocks(str(tmp_path / "pq"),
                                                                                      tokenizer, "shared", 12)
    documents = 0
    for iso, sh in zip(isolated, shared):
        assert torch.equal(iso["input_ids"], sh["input_ids"]) and "position_ids" not in sh
        ids, pos = iso["input_ids"], iso["position_ids"]
        assert pos.tolist() == document_positions(ids.numpy(), tokenizer.eos_token_id).tolist()
        alone, n = _segments_alone(model, ids, iso["provenance"].tolist())
        documents += n
        with torch.no_grad():
            logits = model(input_ids=ids[None], position_ids=pos[None]).logits[0]
            packed = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")
            hf = model(input_ids=ids[None], position_ids=pos[None], labels=ids[None]).loss   # the Trainer's loss
            plain = model(input_ids=ids[None], labels=ids[None]).loss
        assert torch.allclose(packed, alone, rtol=1e-12, atol=0), (packed, alone)
        assert torch.allclose(hf.double(), alone / (BLOCK - 1), rtol=1e-6)   # the loss is computed in float32
        if n > 1:   # the documents do attend to each other without it
            assert abs(plain.item() - hf.item()) > 1e-4
    assert documents > len(isolated) + 8   # blocks of several documents


def test_without_a_cache_off_transformers_would_not_isolate(tokenizer):
    """GPT-2's config has use_cache true, and transformers makes a cache even in training and then leaves packed
    position_ids unmasked: isolate_documents turns it off (and refuses a model without position_ids)."""
    model = _model("sdpa")
    assert model.config.use_cache is False
    with as_configured(model):
        assert model.config.use_cache is True
    assert model.config.use_cache is False

    class NoPositions(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return input_ids
    with pytest.raises(ConfigError, match="forward takes position_ids; NoPositions does not"):
        isolate_documents(NoPositions())


def _argv(data, out, steps, workers, *extra):
    source = ["--dataset_name", str(data)] if data is not None else []
    return ["--dataset_streaming", "true", "--do_train", *source, "--config_name", TINY_MODEL,
            "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
            "--dataset_block_size", str(BLOCK), "--dataset_shuffle_buffer", "16", "--logging_steps", "1",
            "--save_steps", "3", "--use_cpu", "true", "--seed", "3", "--dataloader_num_workers", str(workers),
            "--dataset_document_attention", "isolated", "--disable_tqdm", "true", "--report_to", "none", *extra]


def _check_positions(seen, eos):
    restarts = 0
    for ids, pos, _ in (mb for micro in seen.values() for mb in micro):
        assert pos is not None and pos.tolist() == document_positions(ids.numpy(), eos).tolist()
        restarts += int((pos[:, 1:] == 0).sum())
    assert restarts > 0


@pytest.mark.slow
def test_isolated_runs_resume_bitwise_elastically_and_from_prepared_blocks(tmp_path, monkeypatch, tokenizer):
    """The job with 2 workers, straight and resumed (bitwise), resumed with 1 worker (elastic), as a mixture, and
    from blocks saved by `python -m lmstream.prepare` (which stores no positions: they come from the ids)."""
    import lmstream.tools.prepare as lp
    write_parquet(tmp_path / "pq", make_docs(200, seed=4), shards=3, rows_per_group=8)
    data, eos = tmp_path / "pq", tokenizer.eos_token_id
    straight = train_fed(_argv(data, tmp_path / "a", 6, 2), monkeypatch)
    _check_positions(straight, eos)
    for folder in (tmp_path / "a", tmp_path / "a" / "checkpoint-3"):   # saved as configured: generation keeps its cache
        assert json.loads((folder / "config.json").read_text())["use_cache"] is True
    resumed = train_fed(_argv(data, tmp_path / "a", 6, 2, "--resume_from_checkpoint",
                              str(tmp_path / "a" / "checkpoint-3"), "--output_dir", str(tmp_path / "b")), monkeypatch)
    for step in (4, 5, 6):
        (a,), (b,) = straight[step], resumed[step]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2], step
    report = lmstream.inspect_step(str(tmp_path / "a"), 5)    # replayed: the blocks the model saw
    assert [b["input_ids"] for b in report["micro_batches"][0]["blocks"]] == straight[5][0][0].tolist()
    elastic = train_fed(_argv(data, tmp_path / "a", 6, 1, "--resume_from_checkpoint",
                              str(tmp_path / "a" / "checkpoint-3"), "--output_dir", str(tmp_path / "c")), monkeypatch)
    _check_positions(elastic, eos)
    mixture = ('[{"name": "%s", "weight": 0.5}, {"name": "%s", "weight": 0.5}]' % (data, data))
    mixed = train_fed(_argv(None, tmp_path / "d", 3, 2, "--dataset_mixture", mixture), monkeypatch)
    _check_positions(mixed, eos)
    blocks = tmp_path / "blocks"
    assert lp.main(["--dataset_name", str(data), "--config_name", TINY_MODEL, "--dataset_block_size", str(BLOCK),
                    "--tokenized_dataset_save_dir", str(blocks)]) == 0
    loaded = train_fed(_argv(data, tmp_path / "e", 3, 0, "--tokenized_dataset_load_dir", str(blocks)), monkeypatch)
    _check_positions(loaded, eos)
