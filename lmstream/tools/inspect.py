"""What did the model see at step N? The blocks of an optimizer step, with the documents they are
made of.

    python -m lmstream.inspect OUTPUT_DIR --step 41200 [--rank R] [--text] [--json]
    python -m lmstream.inspect OUTPUT_DIR --document ID_OR_URL --steps 41000-41400 [--json]

    report = lmstream.inspect_step("output", 12)       # the same, as a dict (a notebook cell)

The data order is a pure function of the seed, the plan and the saved positions, so nothing is
logged while
training: the step's data is replayed. From the run's lineage (lmstream.training.lineage) comes the
topology in force at step N (processes, workers, batch size, gradient accumulation, skipped steps);
from the nearest checkpoint at or before N that this topology wrote (or the one it resumed from)
come the positions; each rank's loader is built as training built it, placed there (elastically, if
the topology changed at that resume) and run forward to step N: only the row groups after the
checkpoint are read. Each block's segments (lmstream.tokens.packing) name the shard, row group, row
and token range of its documents; their `id` and `url` columns are read for just those rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..training import lineage
from ..training.checkpoints import (CHECKPOINT_PREFIX, checkpoint_step, is_complete,
                                    read_data_states, trained_steps)
from ..config import DataArguments, parse_step_ranges
from ..stream.pipeline import build_pipeline
from ..corpus.docids import ID_COLUMNS, id_columns
from ..errors import ConfigError
from ..paths import check_one
from ..stream.loader import build_loader
from ..training.resume import pinned_plan
from ..training.trainer import place_loader


def inspect_step(output_dir: str, step: int, ranks=None, text: bool = False) -> dict:
    """Every rank's micro-batches of optimizer step `step` (1-based, as the logs number them), block
    by block."""
    out = {"output_dir": output_dir, "step": step, "micro_batches": []}
    for s, rank, micro, ids, prov, ctx in replay(output_dir, step, step, ranks):
        out.update(checkpoint=ctx["checkpoint"], topology=ctx["topology"],
                   sources=ctx["describe"].names)
        blocks = [{"input_ids": row.tolist(), "segments": ctx["describe"](p, row, text)} for row,
                  p in zip(ids, prov)]
        out["micro_batches"].append({"rank": rank, "micro_batch": micro, "blocks": blocks})
    return out


def find_document(output_dir: str, key: str, first: int, last: int, ranks=None) -> list[dict]:
    """Where the document whose id or url is `key` was trained between steps first..last."""
    found = []
    for s, rank, micro, ids, prov, ctx in replay(output_dir, first, last, ranks):
        for b, (row, p) in enumerate(zip(ids, prov)):
            for seg in ctx["describe"](p, row, False):
                if key in (seg.get("id"), seg.get("url")):
                    found.append({"step": s, "rank": rank, "micro_batch": micro, "block": b, **seg})
    return found


def replay(output_dir: str, first: int, last: int, ranks=None):
    """(step, rank, micro-batch, input_ids, provenance per row, context) for steps first..last, as
    trained."""
    if first < 1 or last < first:
        raise ConfigError(f"Steps {first}-{last}: give steps from 1 on, the "
                          f"first not after the last.")
    segments = lineage.read(os.path.join(output_dir, lineage.RUN_LINEAGE))
    if not segments:
        raise ConfigError(f"'{output_dir}' holds no {lineage.RUN_LINEAGE}: it is not the output "
                          "folder of a streamed lmstream run (or one from before lmstream recorded "
                          "lineages).")
    for i, seg in enumerate(segments):
        end = segments[i + 1]["from_step"] if i + 1 < len(segments) else None
        lo, hi = max(first, seg["from_step"] + 1), last if end is None else min(last, end)
        if lo <= hi:
            yield from _replay_segment(output_dir, seg, lo, hi, ranks)


def _base_checkpoint(output_dir: str, seg: dict, step: int) -> str | None:
    """The newest complete checkpoint before `step` written by segment `seg`, else the one it
    resumed from."""
    best = None
    for name in os.listdir(output_dir):
        c = checkpoint_step(name)
        path = os.path.join(output_dir, name)
        if c is None or not (seg["from_step"] < c < step) or not is_complete(path):
            continue
        theirs = lineage.read(path)
        if theirs and _same(theirs[-1], seg) and (best is None
                                                  or c > checkpoint_step(os.path.basename(best))):
            best = path
    if best is None and seg["from_step"] > 0:
        best = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{seg['from_step']}")
        if not os.path.isdir(best):
            raise ConfigError(f"The data of step {step} cannot be replayed: the run that took it "
                              f"started from checkpoint-{seg['from_step']}, which is gone from "
                              f"'{output_dir}', and saved no checkpoint before that step.")
    return best


def _replay_arguments(seg: dict, output_dir: str) -> DataArguments:
    """The segment's data arguments, its own list of skipped documents in force (a later run may
    have listed more)."""
    data = dict(seg["data_args"], dataset_skip_documents=None, tokenized_dataset_save_dir=None)
    try:   # the run's node cache, where this machine has it (a replay elsewhere reads the store)
        check_one("dataset_cache_dir", data.get("dataset_cache_dir"), "new-folder")
    except ConfigError:
        data["dataset_cache_dir"] = None
    if seg.get("skip_documents"):
        path = os.path.join(output_dir, ".lmstream", f"skip_documents-{seg['from_step']}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(f"{d}\n" for d in seg["skip_documents"]))
        data["dataset_skip_documents"] = path
    return DataArguments(**data)


def _same(a: dict, b: dict) -> bool:
    strip = ("skipped",)
    return {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items()
                                                              if k not in strip}


def _replay_segment(output_dir: str, seg: dict, first: int, last: int, ranks):
    from transformers import AutoTokenizer
    ckpt = _base_checkpoint(output_dir, seg, first)
    start = trained_steps(ckpt) if ckpt else 0
    args = _replay_arguments(seg, output_dir)
    has_tok = ckpt and os.path.isfile(os.path.join(ckpt, "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(ckpt if has_tok else seg["tokenizer"])
    states = read_data_states(ckpt) if ckpt else None
    plan = pinned_plan(ckpt, args)[0] if ckpt else None
    world, workers, ga = seg["world_size"], seg["workers"], seg["grad_accum"]
    skips = {lo: hi for lo, hi in seg["skip_steps"] if lo > start}
    topology = {k: seg[k] for k in ("from_step", "world_size", "workers", "batch_size",
                                    "grad_accum", "skip_steps")}
    # logical readers: the step's blocks in their global order, in one process, then each rank's
    logical = args.dataset_logical_readers
    batch, per_step = ((seg["batch_size"] * world * ga, 1) if logical else (seg["batch_size"], ga))
    for rank in [0] if logical else (range(world) if ranks is None else ranks):
        ds = build_pipeline(args, tokenizer, seed=seg["seed"], rank=rank,
                            world_size=1 if logical else world,
                            max_positions=seg["max_positions"], max_samples=seg["max_samples"],
                            plan=plan)
        if hasattr(ds, "set_batches"):   # a mixture's schedule, keyed to the optimizer step
            ds.set_batches(batch, per_step)
        loader = build_loader(ds, batch, 0 if logical else workers)
        place_loader(loader, ds, states, rank, world, workers)
        ctx = {"checkpoint": ckpt, "topology": topology, "describe": Describer(ds, tokenizer, args)}
        batches = _Batches(loader)
        for step in range(start + 1, last + 1):
            if step in skips:
                batches.take((skips[step] - step + 1) * per_step)
            for micro, (ids, prov) in enumerate(batches.take(per_step)):
                if step < first:
                    continue
                if not logical:
                    yield step, rank, micro, ids, prov, ctx
                    continue
                for r in range(world) if ranks is None else ranks:   # rank r: every world-th
                    mine, rows = ids[r::world], prov[r::world]
                    for m in range(0, len(mine), seg["batch_size"]):
                        yield (step, r, m // seg["batch_size"], mine[m:m + seg["batch_size"]],
                               rows[m:m + seg["batch_size"]], ctx)
        batches.close()


class _Batches:
    """A loader's batches across epochs, as the Trainer takes them (a new iterator when one
    ends)."""

    def __init__(self, loader):
        self.loader, self.it, self.epoch = loader, iter(loader), 0

    def take(self, n: int) -> list:
        got, fresh = [], False
        while len(got) < n:
            batch = next(self.it, None)
            if batch is None:
                if got or fresh:   # the epoch's last step takes what is left
                    self._next_epoch()
                    return got
                self._next_epoch()
                fresh = True
                continue
            got.append((batch["input_ids"], list(self.loader.provenance)))
        return got

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.loader.set_epoch(self.epoch)
        self.it = iter(self.loader)

    def close(self) -> None:
        del self.it


class Describer:
    """A block's segments as readable records: source, file, row group, row, token range, id and
    url, text."""

    def __init__(self, ds, tokenizer, args: DataArguments):
        streams = getattr(ds, "streams", None) or [ds]
        self.plans = [s.plan for s in streams]
        self.names = getattr(ds, "names", None) or [args.dataset_name]
        self.tokenizer, self.args, self.cache = tokenizer, args, {}

    def __call__(self, prov, ids, text: bool) -> list[dict]:
        out, at = [], 0
        for source, shard, group, row, a, b in prov.tolist():
            plan = self.plans[source]
            rec = {"source": self.names[source],
                   "file": plan.shards[shard].name or plan.shards[shard].url, "row_group": group,
                   "row": row, "tokens": [a, b], "block_tokens": [at, at + b - a]}
            rec.update(self._fields(source, shard, group).get(row, {}))
            if text:
                rec["text"] = self.tokenizer.decode(ids[at:at + b - a].tolist())
            at += b - a
            out.append(rec)
        return out

    def _fields(self, source: int, shard: int, group: int) -> dict:
        """{row: {"id": ..., "url": ...}} of one row group (or line-based file), read once."""
        key = (source, shard, group)
        if key not in self.cache:
            self.cache[key] = id_columns(self.plans[source], shard, group, self.args)
        return self.cache[key]


# -- the command ----------------------------------------------------------------------------------
def _print_step(report: dict, out=sys.stdout) -> None:
    t = report["topology"]
    print(f"step {report['step']} of {report['output_dir']}: {t['world_size']} process(es) x "
          f"{t['workers']} worker(s), batch {t['batch_size']}, gradient accumulation "
          f"{t['grad_accum']}; replayed from {report['checkpoint'] or 'the start'}", file=out)
    for mb in report["micro_batches"]:
        print(f"rank {mb['rank']}, micro-batch {mb['micro_batch']}:", file=out)
        for b, block in enumerate(mb["blocks"]):
            print(f"  block {b} ({len(block['input_ids'])} tokens)", file=out)
            for seg in block["segments"]:
                ident = "  ".join(f"{k}={seg[k]}" for k in ID_COLUMNS if k in seg)
                source = f"{seg['source']}: " if len(report["sources"]) > 1 else ""
                print(f"    [{seg['block_tokens'][0]}:{seg['block_tokens'][1]}) "
                      f"{source}{seg['file']} row group {seg['row_group']} row {seg['row']} tokens "
                      f"{seg['tokens'][0]}-{seg['tokens'][1]}"
                      f"{'  ' + ident if ident else ''}", file=out)
                if "text" in seg:
                    print("      " + repr(seg["text"][:300]), file=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmstream.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir")
    ap.add_argument("--step", type=int, help="the optimizer step (as the logs number them)")
    ap.add_argument("--document",
                    help="a document's id or url: the steps that trained on it (needs --steps)")
    ap.add_argument("--steps", help="A-B: the steps --document searches")
    ap.add_argument("--rank", type=int, action="append",
                    help="only this rank (repeatable); default all")
    ap.add_argument("--text", action="store_true", help="also print each segment's decoded text")
    ap.add_argument("--json", action="store_true", help="print JSON (with each block's token ids)")
    a = ap.parse_args(argv)
    try:
        if a.document:
            if not a.steps:
                raise ConfigError("--document searches a range of steps: add --steps A-B.")
            (first, last), = parse_step_ranges(a.steps)
            found = find_document(a.output_dir, a.document, first, last, a.rank)
            if a.json:
                print(json.dumps(found, indent=1))
            else:
                for f in found:
                    print(f"step {f['step']} rank {f['rank']} micro-batch {f['micro_batch']} block "
                          f"{f['block']}: tokens {f['tokens'][0]}-{f['tokens'][1]} of {f['file']} "
                          f"row {f['row']}")
                print(f"{len(found)} block segment(s) of '{a.document}' in steps {first}-{last}")
            return 0
        if a.step is None:
            raise ConfigError("Say which step: --step N (or --document ID --steps A-B).")
        report = inspect_step(a.output_dir, a.step, a.rank, a.text)
        if a.json:
            print(json.dumps(report))
        else:
            _print_step(report)
        return 0
    except ConfigError as err:
        print(f"lmstream.inspect: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
