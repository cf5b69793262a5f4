"""The house rules of lmstream's code, checked on the source (see docs/architecture.md):

* the package is a root vocabulary (errors, retry, config, arguments, help), wings in the data's order
  (corpus -> tokens -> stream -> training -> tools) and, on top, the doors (`python -m lmstream.X`, the console
  entries, `import lmstream`);
* imports go one way: a wing imports only the vocabulary and wings below it, a module of a wing only modules of
  earlier layers of its wing (function-level imports included), so there is no import cycle; every module has
  a place in WINGS and every place a module;
* the corpus, tokens and stream wings never import transformers (a plain PyTorch loop can use the stream);
* no module over 300 lines, no function over 50; at most 1 % of the lines over 100 characters (a URL,
  a command in a docstring, a `noqa` that must stay on its line);
* no private name (`_x`) of one lmstream module used in another; a library's private is touched only inside the
  one adapter class that ADAPTERS names for it;
* docs/architecture.md's import table is what the source imports.
"""
import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lmstream")
ARCHITECTURE = os.path.join(os.path.dirname(PACKAGE), "docs", "architecture.md")
# The wings, bottom to top; each a list of layers (a module imports modules of earlier layers only).
WINGS = {
    "": [["errors"], ["retry", "paths", "mixspec"], ["config"], ["arguments", "helptext"]],
    "corpus": [["shards", "longtext", "readahead", "closing", "cards", "versions", "signed", "sparse", "cache"], ["ranges"], ["hub", "plan"], ["sources", "planfile"],
               ["textfiles"], ["documents", "docids"]],
    "tokens": [["backends", "provenance", "calls"], ["tokenize", "packing"]],
    "stream": [["state", "workers"], ["elastic", "logical"], ["reader"], ["collate"], ["batches", "blocks"],
               ["serving"], ["loader", "mixture"], ["pipeline"], ["materialize"]],
    "training": [["models", "runlock", "signals", "checkpoints", "progress", "data"],
                 ["outputs", "lineage", "resume"],
                 ["trainer"], ["run"], ["job"]],
    "tools": [["plots", "localserve", "reference", "prepare", "grouping", "kernel"],
              ["explore", "resuming", "bench_pipeline", "inspect", "hubplan"],
              ["bench_prepare", "bench_logical", "gpucheck", "render", "hubsim"], ["bench"]],
    "doors": [["train", "prepare", "inspect", "bench", "plan"], ["cli", "__init__"]],
}
NO_TRANSFORMERS = ("corpus", "tokens", "stream")
ADAPTERS = {   # library privates, each touched in one place only
    "training.trainer.StreamingTrainer": "transformers.Trainer: no public hook for the data loader's state or "
                                         "the RNG restore",
    "stream.loader.BlockLoader": "torchdata StatefulDataLoader and its iterator: no public hook to hand new "
                                 "workers the last positions, nor to publish the workers' final states",
}
ROOT_VOCABULARY = {m for layer in WINGS[""] for m in layer}


def _modules():
    """(dotted name inside lmstream, source text) of every module; a wing's __init__ is named by its wing."""
    for dirpath, _, files in os.walk(PACKAGE):
        pkg = os.path.relpath(dirpath, PACKAGE).replace(os.sep, ".")
        if "__pycache__" in pkg or pkg.startswith("assets") or pkg.startswith("notebooks"):
            continue
        for name in sorted(files):
            if name.endswith(".py"):
                mod = name[:-3] if pkg == "." else f"{pkg}.{name[:-3]}"
                with open(os.path.join(dirpath, name)) as f:
                    yield mod, f.read()


def _place(module):
    """(wing index, layer index) of a module; a wing's __init__ sits below the wing's modules."""
    wing, _, name = module.rpartition(".")
    if name == "__init__" and wing:
        return list(WINGS).index(wing), -1
    if not wing and name not in ROOT_VOCABULARY:
        wing = "doors"
    for i, layer in enumerate(WINGS.get(wing, [])):
        if name in layer:
            return list(WINGS).index(wing), i
    return None


def _package(module):
    return module.rpartition(".")[0] if "." in module else ""


def _imports(module, tree):
    """(target module, node) of every lmstream import in a module, relative ones resolved."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = _package(module).split(".") if _package(module) else []
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            base = ".".join(base + ([node.module] if node.module else []))
        elif (node.module or "").startswith("lmstream"):
            base = node.module[len("lmstream."):] if node.module != "lmstream" else ""
        else:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            yield (sub if _place(sub) else base or "__init__"), node


def test_every_module_has_a_place_and_every_place_a_module():
    mods = dict(_modules())
    assert [m for m in mods if _place(m) is None] == []
    named = {(f"{w}.{m}" if w not in ("", "doors") else m) for w, layers in WINGS.items() for layer in layers
             for m in layer}
    assert sorted(named - set(mods)) == []


def test_imports_go_down_the_wings_only():
    wrong = []
    for module, text in _modules():
        for target, node in _imports(module, ast.parse(text)):
            if target != module and not _place(target) < _place(module):
                wrong.append(f"{module}:{node.lineno} imports {target}")
    assert wrong == [], "\n".join(wrong)


def test_the_stream_wings_never_import_transformers():
    wrong = []
    for module, text in _modules():
        if module.split(".")[0] in NO_TRANSFORMERS:
            for node in ast.walk(ast.parse(text)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                wrong += [f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "transformers"]
    assert wrong == [], "\n".join(wrong)


def test_no_long_modules_functions_or_lines():
    long, lines, over = [], 0, []
    for module, text in _modules():
        if text.count("\n") > 300:
            long.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50:
                long.append(f"{module}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
        for i, line in enumerate(text.splitlines(), 1):
            lines += 1
            if len(line) > 100:
                over.append(f"{module}:{i} {len(line)} characters")
    assert long == [], "\n".join(long)
    assert len(over) <= lines // 100, (f"{len(over)} of {lines} lines over 100 characters (1 % "
                                       "allowed):\n" + "\n".join(over))


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
        targets = n.targets if isinstance(n, ast.Assign) else \
            [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else []
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
                wrong += [f"{module}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                mine = node.attr in own[module]
                # an adapter touches its library's privates: on itself, or on what the library hands it
                if not mine and f"{module}.{cls}" not in ADAPTERS:
                    wrong.append(f"{module}:{node.lineno} uses .{node.attr}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_exists(adapter):
    module, _, cls = adapter.rpartition(".")
    with open(os.path.join(PACKAGE, *module.split(".")) + ".py") as f:
        assert any(isinstance(n, ast.ClassDef) and n.name == cls for n in ast.walk(ast.parse(f.read())))


def import_table() -> list[str]:
    """docs/architecture.md's table: `module -> what it imports`, wing by wing, from the source."""
    rows = []
    for module, text in sorted(_modules(), key=lambda mt: (_place(mt[0]), mt[0])):
        if module.endswith("__init__"):
            continue
        targets = sorted({t for t, _ in _imports(module, ast.parse(text)) if t != module})
        rows.append(f"{module:<26} -> {', '.join(targets) or '(nothing)'}")
    return rows


def test_the_architecture_page_shows_the_imports_the_source_has():
    with open(ARCHITECTURE) as f:
        text = f.read()
    table = re.search(r"<!-- import table -->\n```\n(.*?)```", text, re.S)
    assert table, "docs/architecture.md has no import table"
    want = "\n".join(import_table()) + "\n"
    assert table.group(1) == want, ("docs/architecture.md's import table differs from the source; "
                                    "regenerate it: python tests/test_structure.py")


if __name__ == "__main__":   # regenerate the table in docs/architecture.md
    with open(ARCHITECTURE) as f:
        page = f.read()
    table = "<!-- import table -->\n```\n" + "\n".join(import_table()) + "\n```"
    page = re.sub(r"<!-- import table -->\n```\n.*?```", lambda m: table, page, flags=re.S)
    with open(ARCHITECTURE, "w") as f:
        f.write(page)
