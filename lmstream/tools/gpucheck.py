"""GPU throughput check: the same training loop fed by the streaming pipeline and by synthetic
tokens.

    # on a GPU: GPT-2 small, bf16, SDPA
    python -m lmstream.tools.gpucheck --dataset DIR --config NAME --steps 200
    # tiny sizes on the CPU
    python -m lmstream.tools.gpucheck --cpu-dry-run

Both runs use a plain PyTorch loop (forward, backward, AdamW step), 8 x 1024 tokens per step and the
same model; the first `--warmup` steps are not timed. Reported per run: tokens/s, MFU (model FLOPs:
6 N + 12 L d T per token, over the card's dense bf16 peak) and data wait (time in next(loader) /
wall time), and host CPU use (CPU seconds of this process and the loader's workers per wall second:
cores busy for this one GPU). The pipeline/synthetic throughput ratio is the figure of merit (target
>= 0.98).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..config import DataArguments
from ..training.models import SAMPLE_CONFIG, SAMPLE_DATASET, TINY_MODEL
from ..stream.pipeline import build_pipeline
from ..stream.loader import build_loader

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
GPT2_SMALL = "n_layer=12,n_embd=768,n_head=12,n_positions=1024,n_ctx=1024"


def _model(overrides: str, device, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(TINY_MODEL)
    config.update_from_string(overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).to(device)
    return model, config


def _synthetic(batch: int, block: int, vocab: int, n: int = 64):
    """An endless loader of in-memory random blocks (pinned on a GPU host, like the real
    loader's)."""
    data = torch.randint(0, vocab, (n, batch, block))
    if torch.cuda.is_available():
        data = data.pin_memory()
    i = 0
    while True:
        x = data[i % n]
        yield {"input_ids": x, "labels": x}
        i += 1


def _cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its live children (the loader's
    workers)."""
    import psutil
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:       # a worker that ended meanwhile
            pass
    return total


def _run(model, batches, steps: int, warmup: int, device, bf16: bool) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    wait = 0.0
    it = iter(batches)
    t_start = None
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_start, wait, cpu_start = time.perf_counter(), 0.0, _cpu_seconds()
        t0 = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t0
        ids = batch["input_ids"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t_start
    cores = (_cpu_seconds() - cpu_start) / dt
    return {"seconds": dt, "data_wait_fraction": wait / dt, "loss": float(loss.detach()),
            "host_cores_busy": cores}


def _loader(data_args, tokenizer, a, device):
    """The streaming loader both measurements use: one process, pinned batches on a GPU host."""
    return build_loader(build_pipeline(data_args, tokenizer, seed=0, rank=0, world_size=1), a.batch,
                        a.workers, pin_memory=device.type == "cuda")


def _pipeline_alone(data_args, tokenizer, a, device) -> dict:
    """The loader with no model: how many tokens/s it can deliver (to the device) on this host."""
    it = iter(_loader(data_args, tokenizer, a, device))
    for _ in range(a.warmup):
        next(it)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for _ in range(a.steps):
        next(it)["input_ids"].to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"tokens_per_second": a.steps * a.batch * a.block / dt,
            "host_cores_busy": (_cpu_seconds() - cpu0) / dt}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=SAMPLE_DATASET)
    ap.add_argument("--config", default=None, help="dataset config name")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--model", default=GPT2_SMALL, help="config overrides of GPT-2's config")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate synthetic/pipeline runs this many times")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (a faster GPU is harder to feed)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny model and sizes on the CPU")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def _measure(name: str, a, data_args, tokenizer, device, bf16: bool, device_name: str) -> dict:
    """One timed run: the model fed synthetic batches or the pipeline's, with tokens/s and MFU."""
    torch.manual_seed(0)
    model, config = _model(a.model, device, "sdpa")
    if a.compile:
        model = torch.compile(model)
    if name == "synthetic":
        batches = _synthetic(a.batch, a.block, config.vocab_size)
    else:
        batches = _loader(data_args, tokenizer, a, device)
    r = _run(model, batches, a.steps, a.warmup, device, bf16)
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_params + 12 * config.n_layer * config.n_embd * a.block
    r["tokens_per_second"] = a.steps * a.batch * a.block / r["seconds"]
    peak = next((v for k, v in PEAK_BF16.items() if k in device_name), None)
    r["mfu"] = r["tokens_per_second"] * flops_per_token / peak if peak else None
    r["params"] = n_params
    del model, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.cpu_dry_run:
        a.steps, a.warmup, a.batch, a.block, a.workers = 6, 2, 2, 64, 2
        a.model = "n_layer=2,n_embd=64,n_head=2,n_positions=256,n_ctx=256"
    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu_dry_run else "cpu")
    bf16 = device.type == "cuda"
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    config_name = a.config
    if a.dataset == SAMPLE_DATASET and not config_name:
        # the sample's Parquet folder, read directly: the GPU image has no `datasets` to parse a
        # README config
        a.dataset = os.path.join(SAMPLE_DATASET, "data", SAMPLE_CONFIG)
    data_args = DataArguments(dataset_name=a.dataset, dataset_config_name=config_name,
                              dataset_block_size=a.block)
    from ..tokens.tokenize import Encoder
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "settings": vars(a), "torch": torch.__version__, "cpus": os.cpu_count(),
               "tokenizer_backend": Encoder(tokenizer).backend}
    runs: dict[str, list[dict]] = {"synthetic": [], "pipeline": []}
    # alternate the two, so that clock and thermal drift hit both alike
    for _ in range(a.rounds):
        for name in ("synthetic", "pipeline"):
            runs[name].append(_measure(name, a, data_args, tokenizer, device, bf16,
                                       results["device"]))
    for name, rs in runs.items():    # the best round of each; every round is kept under "rounds"
        results[name] = dict(max(rs, key=lambda r: r["tokens_per_second"]), rounds=rs)
    rates = {name: results[name]["tokens_per_second"] for name in ("pipeline", "synthetic")}
    results["pipeline_over_synthetic"] = rates["pipeline"] / rates["synthetic"]
    results["pipeline_alone"] = _pipeline_alone(data_args, tokenizer, a, device)
    print(json.dumps(results, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
