"""The stream without the Trainer: lmstream's loader in a plain PyTorch loop, its state saved with torch.save and
the loop resumed exactly; the stream's wings imported without transformers; a script that iterates a pipeline
part-way and exits prints nothing but its own output."""
import os
import subprocess
import sys
import textwrap

import torch

from conftest import TINY_MODEL, make_docs, write_parquet

STREAM_WINGS = ("corpus", "tokens", "stream")
HERE = os.path.dirname(os.path.abspath(__file__))


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_the_stream_wings_import_without_transformers(tmp_path):
    """Every module of corpus, tokens and stream, imported in a fresh process, leaves transformers unloaded."""
    import lmstream
    root = os.path.dirname(lmstream.__file__)
    modules = [f"lmstream.{w}.{f[:-3]}" for w in STREAM_WINGS for f in sorted(os.listdir(os.path.join(root, w)))
               if f.endswith(".py") and f != "__init__.py"]
    assert len(modules) > 15
    run = _python(f"""
        import importlib, sys
        for m in {modules!r}:
            importlib.import_module(m)
        import lmstream
        lmstream.build_pipeline, lmstream.build_loader, lmstream.StreamingBlocks
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "accelerate")))
        """, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"


class TinyLM(torch.nn.Module):
    """A bigram model: enough to make gradients depend on every batch."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)

    def forward(self, ids):
        logits = self.head(self.emb(ids[:, :-1]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def _loop(loader, model, opt, steps: int, losses: list) -> None:
    for step, batch in zip(range(steps), loader):
        loss = model(batch["input_ids"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


def _setup(folder, tokenizer, workers: int):
    import lmstream
    args = lmstream.DataArguments(dataset_name=folder, dataset_block_size=32, dataset_shuffle_buffer=8)
    blocks = lmstream.build_pipeline(args, tokenizer, seed=1, rank=0, world_size=1)
    loader = lmstream.build_loader(blocks, batch_size=2, num_workers=workers)
    torch.manual_seed(0)
    model = TinyLM(len(tokenizer))
    return loader, model, torch.optim.SGD(model.parameters(), lr=0.5)


def test_a_plain_pytorch_loop_saves_with_torch_save_and_resumes_exactly(tmp_path, tokenizer):
    write_parquet(tmp_path / "data", make_docs(120, seed=3), shards=3, rows_per_group=6)
    folder = str(tmp_path / "data")
    for workers in (0, 2):
        loader, model, opt = _setup(folder, tokenizer, workers)
        straight = []
        _loop(loader, model, opt, 10, straight)

        loader, model, opt = _setup(folder, tokenizer, workers)
        resumed = []
        _loop(loader, model, opt, 4, resumed)
        path = tmp_path / f"ck-{workers}.pt"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data": loader.state_dict()}, path)
        del loader

        loader, model, opt = _setup(folder, tokenizer, workers)
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        loader.load_state_dict(saved["data"])
        _loop(loader, model, opt, 6, resumed)
        assert resumed == straight, workers     # bitwise: the same batches, in the same order


def test_a_script_that_stops_iterating_part_way_exits_quietly(tmp_path):
    """Interpreter exit after a part-way iteration prints nothing but the script's own lines, and the row
    generators left open are closed while the modules are whole (not left to the garbage collector)."""
    write_parquet(tmp_path / "data", make_docs(200, seed=5), shards=2, rows_per_group=9)
    script = f"""
        import atexit, gc, types

        def paused():
            return [g for g in gc.get_objects() if type(g) is types.GeneratorType and g.gi_frame is not None
                    and g.gi_code.co_name in ("_rows", "_piece_rows")]

        @atexit.register   # registered before lmstream is imported: runs after its exit handlers (last in, first out)
        def check():
            gc.collect()
            print("open at exit", len(paused()))

        import lmstream
        from transformers import AutoTokenizer
        args = lmstream.DataArguments(dataset_name={str(tmp_path / 'data')!r}, dataset_block_size=32)
        blocks = lmstream.build_pipeline(args, AutoTokenizer.from_pretrained({TINY_MODEL!r}), seed=0)
        it = iter(blocks)
        for _ in range(5):
            sample = next(it)
        print("read", tuple(sample["input_ids"].shape))
        assert paused(), "the stream holds open row generators while it is iterated"
        """
    run = _python(script, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "read (32,)\nopen at exit 0\n"
    assert run.stderr == ""
