"""A mixture's sources and its schedule, as the flags give them (JSON, or lists in a YAML file).

    sources = parse_mixture('[{"name": "HuggingFaceFW/fineweb", "weight": 0.7}, {"name": "code", "weight": 0.3}]')
    schedule = parse_schedule('[{"step": 0, "weights": {"HuggingFaceFW/fineweb": 0.9, "code": 0.1}},'
                              ' {"step": 2000, "weights": [0.5, 0.5]}]', sources)
    weights_at(schedule, 1000)    # [0.7, 0.3]: linear between the points
"""
from __future__ import annotations

import json
import math

from .errors import ConfigError

SOURCE_KEYS = {"name", "config", "split", "text_field", "weight", "on_exhausted"}


def _list(spec, flag: str, example: str, items: str) -> list:
    """`spec` (JSON text, or a list from a YAML file) as a non-empty list, else one sentence."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as err:
            raise ConfigError(f"{flag} is not valid JSON ({err}): pass a list like {example}.") from None
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{flag} must be a non-empty list of {items}.")
    return spec


def parse_mixture(spec) -> list[dict]:
    """The sources of `dataset_mixture` (a JSON string or a list of mappings), checked."""
    spec = _list(spec, "dataset_mixture", '[{"name": "...", "weight": 0.7}, ...]',
                 "sources, each with a name and a weight")
    sources = []
    for i, src in enumerate(spec):
        if not isinstance(src, dict) or "name" not in src or "weight" not in src:
            raise ConfigError(f"dataset_mixture source {i} needs a 'name' and a "
                              f"'weight' (got {src!r}).")
        unknown = set(src) - SOURCE_KEYS
        if unknown:
            raise ConfigError(f"dataset_mixture source {i} has unknown key(s) {sorted(unknown)}; "
                              f"the keys are {sorted(SOURCE_KEYS)}.")
        weight = src["weight"]
        if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                or not math.isfinite(weight) or weight <= 0):
            raise ConfigError(f"dataset_mixture source {i} ({src['name']}): weight "
                              f"must be a positive number.")
        if src.get("on_exhausted", "cycle") not in ("cycle", "stop"):
            raise ConfigError(f"dataset_mixture source {i} ({src['name']}): on_exhausted "
                              f"must be 'cycle' or 'stop'.")
        sources.append({"config": None, "split": "train", "text_field": "text",
                        "on_exhausted": "cycle", **src})
    return sources


def source_label(src: dict) -> str:
    """What metrics (mix/<label>) and a schedule's weights call a source: name[:config]."""
    return src["name"] + (f":{src['config']}" if src.get("config") else "")


def _point_weights(weights, sources: list, i: int) -> list[float]:
    """A schedule point's weights in source order, from a list or a mapping of labels or names."""
    if isinstance(weights, dict):
        known = {source_label(s): k for k, s in enumerate(sources)}
        known.update({s["name"]: k for k, s in enumerate(sources) if s["name"] not in known})
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise ConfigError(f"dataset_mixture_schedule point {i} names {unknown}, not sources of "
                              f"dataset_mixture: use {sorted(known)}.")
        out = [0.0] * len(sources)
        for key, w in weights.items():
            out[known[key]] = w
        weights = out
    if not isinstance(weights, list) or len(weights) != len(sources):
        raise ConfigError(f"dataset_mixture_schedule point {i} needs a weight for each of the "
                          f"{len(sources)} sources (a list in their order, or a mapping by name).")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
           for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"dataset_mixture_schedule point {i}: weights must be numbers >= 0, "
                          "not all 0.")
    total = float(sum(weights))
    return [w / total for w in weights]


def parse_schedule(spec, sources: list) -> list[tuple[int, list[float]]]:
    """dataset_mixture_schedule as [(step, normalised weights), ...] in step order, checked."""
    spec = _list(spec, "dataset_mixture_schedule", '[{"step": 0, "weights": {"name": 0.9, ...}}, ...]',
                 "points, each with a step and weights")
    points = []
    for i, p in enumerate(spec):
        if not isinstance(p, dict) or set(p) != {"step", "weights"}:
            raise ConfigError(f"dataset_mixture_schedule point {i} must have exactly 'step' and "
                              f"'weights' (got {p!r}).")
        step = p["step"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
            raise ConfigError(f"dataset_mixture_schedule point {i}: step must be an integer >= 0.")
        if points and step <= points[-1][0]:
            raise ConfigError(f"dataset_mixture_schedule point {i}: steps must increase "
                              f"(step {step} after {points[-1][0]}).")
        points.append((step, _point_weights(p["weights"], sources, i)))
    return points


def weights_at(schedule: list, step: int) -> list[float]:
    """The weights at optimizer step `step` (0: the first update): the first point's before it,
    the last point's after it, linear in between (two points one step apart make a jump)."""
    if step <= schedule[0][0]:
        return schedule[0][1]
    for (s0, w0), (s1, w1) in zip(schedule, schedule[1:]):
        if step < s1:
            t = (step - s0) / (s1 - s0)
            return [a + (b - a) * t for a, b in zip(w0, w1)]
    return schedule[-1][1]
