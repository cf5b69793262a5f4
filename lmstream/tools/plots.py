"""Figures for the notebooks and the run's output folder (matplotlib).

    fig = training_curves("runs/default")     # also saved as runs/default/training_curves.png
"""
from __future__ import annotations

import json
import os

import matplotlib.pyplot as plt


def _save(fig, path: str | None):
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def log_history(output_dir: str) -> list[dict]:
    """The Trainer's log history of a run (trainer_state.json)."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return json.load(f)["log_history"]


PANELS = [   # (log key, title, y-axis label, a second key drawn on the same axes)
    ("loss", "loss", "cross-entropy (nats / token)", "eval_loss"),
    ("learning_rate", "learning rate", "learning rate", None),
    ("tokens_per_second", "throughput", "tokens / s (all ranks)", None),
    ("data_wait_fraction", "waiting for data", "share of step time (%)", None),
]


def training_curves(output_dir: str, save: bool = True):
    """Loss (train and eval), learning rate, tokens/s, data-wait share and, for a mixture, each
    source's share of the tokens, over steps: a 2-column grid that reads at notebook width."""
    hist = log_history(output_dir)
    sources = sorted({k for h in hist for k in h if k.startswith("mix/")})
    n = len(PANELS) + bool(sources)
    fig, axes = plt.subplots((n + 1) // 2, 2, figsize=(10, 3.3 * ((n + 1) // 2)), squeeze=False)
    axes = axes.ravel()
    for ax, (key, title, ylabel, extra) in zip(axes, PANELS):
        scale = 100 if key == "data_wait_fraction" else 1
        pts = [(r["step"], r[key] * scale) for r in hist if key in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
        ev = [(r["step"], r[extra]) for r in hist if extra and extra in r]
        if ev:
            ax.plot(*zip(*ev), marker="o", linestyle="--", label=extra)
        if extra:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    if sources:
        mixture_panel(axes[len(PANELS)], hist, sources, mixture_schedule(output_dir))
    for ax in axes[n:]:
        ax.axis("off")
    for ax in axes[:n]:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, os.path.join(output_dir, "training_curves.png") if save else None)


def mixture_schedule(output_dir: str) -> list | None:
    """[(from step, schedule, source labels)] of each start of the run that had a
    dataset_mixture_schedule (its lineage), oldest first; None without one."""
    from ..mixspec import parse_mixture, parse_schedule, source_label
    from ..training.lineage import RUN_LINEAGE, read
    out = []
    for seg in read(os.path.join(output_dir, RUN_LINEAGE)):
        data = seg.get("data_args", {})
        if data.get("dataset_mixture_schedule") and data.get("dataset_mixture"):
            mix = parse_mixture(data["dataset_mixture"])
            out.append((seg["from_step"], parse_schedule(data["dataset_mixture_schedule"], mix),
                        [source_label(m) for m in mix]))
    return out or None


def mixture_panel(ax, hist: list, sources: list, schedule: list | None) -> None:
    """Each source's share of the tokens over steps. With a schedule: the share of each logging
    window (from the logged running shares: a rank trains as many tokens each step) against what
    the schedule gave those steps on average (dashed)."""
    import numpy as np

    from ..mixspec import weights_at
    for n, key in enumerate(sources):
        pts = [(h["step"], h[key]) for h in hist if key in h]
        color = f"C{n}"
        if not schedule:
            ax.plot(*zip(*pts), marker=".", label=key[4:][-30:], color=color)
            continue
        window = [(t2, (s2 * t2 - s1 * t1) / (t2 - t1))
                  for (t1, s1), (t2, s2) in zip([(0, 0.0), *pts], pts) if t2 > t1]
        ax.plot(*zip(*window), marker=".", label=f"{key[4:][-30:]} (each log window)", color=color)
        planned = []
        for t1, t2 in zip([0, *[t for t, _ in pts]], [t for t, _ in pts]):
            segs = [seg for seg in schedule if seg[0] <= t1] or schedule[:1]
            _, sched, labels = segs[-1]
            if key[4:] in labels:
                i = labels.index(key[4:])
                planned.append((t2, np.mean([weights_at(sched, s)[i] for s in range(t1, t2)])))
        if planned:
            ax.plot(*zip(*planned), linestyle="--", color=color, label=f"{key[4:][-30:]} (schedule)")
    ax.set_title("share of tokens per source" + (" against the schedule" if schedule else ""))
    ax.set_ylabel("share of this rank's tokens")
    ax.legend(fontsize=7)


def length_histogram(lengths, marks: dict, path: str | None = None):
    """Histogram of document lengths in tokens on a log scale, with vertical lines at `marks` (label
    -> tokens), e.g. the training block size and the model's context length."""
    import numpy as np
    lengths = np.asarray(lengths)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    lo = max(1, min([int(lengths.min()), *marks.values()]) / 1.5)
    bins = np.logspace(np.log10(lo), np.log10(max(lengths.max(), 2)) + 0.05, 40)
    ax.hist(lengths, bins=bins, color="#4878a8")
    ax.set_xscale("log")
    for (label, at), color in zip(marks.items(), ["#c44e52", "#dd8452", "#55a868"]):
        share = 100 * (lengths > at).mean()
        ax.axvline(at, color=color, linestyle="--",
                   label=f"{label}: {at:,} tokens ({share:.0f}% of documents longer)")
    ax.set_xlabel("tokens per document (EOS included, log scale)")
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def bars(values: dict, title: str, xlabel: str, path: str | None = None, fmt: str = "{:,.0f}"):
    """A labelled horizontal bar chart of name -> value (long names stay readable)."""
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(values) + 1.2))
    names, nums = list(values)[::-1], list(values.values())[::-1]
    colors = ["#4878a8", "#55a868", "#dd8452", "#c44e52", "#8172b3"][: len(names)][::-1]
    rects = ax.barh(names, nums, color=colors)
    for r, v in zip(rects, nums):
        ax.annotate(" " + fmt.format(v), (r.get_width(), r.get_y() + r.get_height() / 2),
                    va="center", fontsize=9)
    ax.set_xlim(0, max(nums) * 1.25 if max(nums) > 0 else 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return _save(fig, path)


def losses(output_dir: str) -> dict:
    """step -> training loss of a run (trainer_state.json)."""
    return {h["step"]: h["loss"] for h in log_history(output_dir) if "loss" in h}


def loss_overlay(runs: dict, stop_step: int | None = None, path: str | None = None):
    """Training loss over steps of several runs (label -> output_dir) on one plot, a stop marked at
    `stop_step`."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for (label, folder), style in zip(runs.items(), [dict(marker="o", linewidth=3, alpha=0.45),
                                                      dict(marker="x", linestyle="--",
                                                           color="black")]):
        pts = sorted(losses(folder).items())
        ax.plot(*zip(*pts), label=label, **style)
    if stop_step:
        ax.axvline(stop_step + 0.5, color="#c44e52", linestyle=":",
                   label=f"stop and resume after step {stop_step}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def packed_blocks(docs: list, block_size: int, path: str | None = None):
    """Documents packed into blocks, drawn: one row per block, one cell per token coloured by its
    document, each document's EOS marked; the tokens that do not fill a block (carried over to the
    next documents) in a last, hatched row."""
    colour = plt.get_cmap("tab10")
    cells = [(k, str(t)) for k, d in enumerate(docs) for t in [*d, "EOS"]]
    rows = [cells[i:i + block_size] for i in range(0, len(cells), block_size)]
    fig, ax = plt.subplots(figsize=(0.8 * block_size + 2, 0.6 * len(rows) + 0.8))
    for r, row in enumerate(rows):
        carried = len(row) < block_size
        for c, (k, label) in enumerate(row):
            ax.add_patch(plt.Rectangle((c, -r), 0.94, 0.86, facecolor=colour(k), edgecolor="black",
                                       alpha=0.45 if carried else 0.85,
                                       hatch="//" if carried else None))
            ax.text(c + 0.47, -r + 0.43, label, ha="center", va="center", fontsize=9,
                    fontweight="bold" if label == "EOS" else None)
        name = "carried over" if carried else f"block {r + 1}"
        ax.text(-0.3, -r + 0.43, name, ha="right", va="center")
    ax.set_xlim(-2.4, block_size)
    ax.set_ylim(-len(rows) + 0.7, 1.2)
    ax.axis("off")
    ax.set_title(f"{len(docs)} documents (one colour each) packed into blocks of {block_size}")
    return _save(fig, path)
