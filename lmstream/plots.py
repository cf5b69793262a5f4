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


def training_curves(output_dir: str, save: bool = True):
    """Loss (train and eval), learning rate, tokens/s, data-wait fraction and, for a mixture, each
    source's share of the tokens over steps."""
    hist = log_history(output_dir)
    panels = [("loss", "training loss", "eval_loss"), ("learning_rate", "learning rate", None),
              ("tokens_per_second", "tokens / s (all ranks)", None), ("data_wait_fraction", "data wait / step time", None)]
    sources = sorted({k for h in hist for k in h if k.startswith("mix/")})
    fig, axes = plt.subplots(1, len(panels) + bool(sources), figsize=(4 * (len(panels) + bool(sources)), 3.4))
    for ax, (key, title, extra) in zip(axes, panels):
        pts = [(h["step"], h[key]) for h in hist if key in h]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
        if extra:
            ev = [(h["step"], h[extra]) for h in hist if extra in h]
            if ev:
                ax.plot(*zip(*ev), marker="o", linestyle="--", label=extra)
            ax.legend()
        ax.set_title(title)
    if sources:
        for key in sources:
            axes[-1].plot(*zip(*[(h["step"], h[key]) for h in hist if key in h]), marker=".", label=key[4:][-30:])
        axes[-1].set_title("share of tokens per source")
        axes[-1].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, os.path.join(output_dir, "training_curves.png") if save else None)


def length_histogram(lengths, block_size: int, path: str | None = None):
    """Histogram of document lengths in tokens, with the block size marked."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.hist(lengths, bins=40, color="#4878a8")
    ax.axvline(block_size, color="#c44e52", linestyle="--", label=f"block size {block_size}")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def bars(values: dict, title: str, ylabel: str, path: str | None = None, fmt: str = "{:,.0f}"):
    """A labelled bar chart of name -> value."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names, nums = list(values), list(values.values())
    rects = ax.bar(names, nums, color=["#c44e52", "#dd8452", "#55a868", "#4878a8"][: len(names)])
    for r, v in zip(rects, nums):
        ax.annotate(fmt.format(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)
