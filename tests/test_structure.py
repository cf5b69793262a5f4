"""The house rules of lmstream's code, checked on the source (see docs/architecture.md):

* imports go one way, down the stages in LAYERS: no module imports one of a later layer, function-level imports
  included, so there is no import cycle;
* no module over 300 lines, no function over 50;
* no private name (`_x`) of one lmstream module used in another; a library's private is touched only inside the
  one adapter class that ADAPTERS names for it.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lmstream")
LAYERS = [   # each module may import modules of earlier layers only (none of its own layer)
    ["errors", "provenance"],
    ["shards", "retry", "longtext", "packing", "readahead", "runlock", "stopping", "plots", "backends", "localserve",
     "reference"],
    ["config", "ranges"],
    ["hub", "tokenize", "helptext"],
    ["sources", "models", "arguments"],
    ["plan", "textfiles"],
    ["documents", "planfile", "docids"],
    ["state"],
    ["elastic"],
    ["reader"],
    ["batches"],
    ["pipeline", "loader"],
    ["mixture"],
    ["data", "checkpoints", "progress"],
    ["lineage"],
    ["trainer", "resume", "prepare", "explore"],
    ["run", "inspect"],
    ["train", "bench_pipeline"],
    ["bench_prepare"],
    ["job", "bench", "gpucheck"],
    ["cli", "__init__"],
]
ADAPTERS = {   # library privates, each touched in one place only
    "trainer.StreamingTrainer": "transformers.Trainer: no public hook for the data loader's state or the RNG restore",
    "loader.BlockLoader": "torchdata StatefulDataLoader and its iterator: no public hook to hand new workers the last "
                          "positions, nor to publish the workers' final states",
}


def _modules():
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith(".py"):
            path = os.path.join(PACKAGE, name)
            with open(path) as f:
                yield name[:-3], f.read()


def _layer(module):
    return next((i for i, names in enumerate(LAYERS) if module in names), None)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                yield node.module.split(".")[0], node
            else:
                for alias in node.names:
                    yield alias.name, node
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmstream."):
            yield node.module.split(".")[1], node


def test_every_module_has_a_layer():
    assert [m for m, _ in _modules() if _layer(m) is None] == []


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, text in _modules():
        for target, node in _imports(ast.parse(text)):
            if target != module and not (_layer(target) or 0) < (_layer(module) or 0):
                wrong.append(f"{module}.py:{node.lineno} imports {target}")
    assert wrong == [], "\n".join(wrong)


def test_no_long_modules_or_functions():
    long = []
    for module, text in _modules():
        if text.count("\n") > 300:
            long.append(f"{module}.py: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50:
                long.append(f"{module}.py:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == [], "\n".join(long)


def _classes(tree):
    """(node, enclosing class name or None) for every node."""
    def walk(node, cls):
        for child in ast.iter_child_nodes(node):
            yield child, cls
            yield from walk(child, child.name if isinstance(child, ast.ClassDef) else cls)
    yield from walk(tree, None)


def _defined(tree) -> set:
    """Names a module defines: functions, classes, module names and attributes it assigns."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Name):
                    names.add(e.id)
                elif isinstance(e, ast.Attribute):
                    names.add(e.attr)
    return names


def test_privates_stay_in_their_module():
    own = {m: _defined(ast.parse(t)) for m, t in _modules()}
    wrong = []
    for module, text in _modules():
        for node, cls in _classes(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                wrong += [f"{module}.py:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                mine = node.attr in own[module]
                # an adapter touches its library's privates: on itself, or on what the library hands it (an iterator)
                if not mine and not f"{module}.{cls}" in ADAPTERS:
                    wrong.append(f"{module}.py:{node.lineno} uses .{node.attr}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_exists(adapter):
    module, cls = adapter.split(".")
    with open(os.path.join(PACKAGE, module + ".py")) as f:
        assert any(isinstance(n, ast.ClassDef) and n.name == cls for n in ast.walk(ast.parse(f.read())))
