"""The README and docs/ keep working: every relative link leads to a file, every `python -m lmstream.X` and
console entry they name exists, every `lmstream.NAME` in their Python blocks is a real name, the blocks marked
`<!-- runnable -->` run, and the README's terminal lines have the shape of what the job prints (checked on a
real run by tests/test_job.py through `terminal_lines_drifted`)."""
import ast
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
BLOCK = re.compile(r"(<!-- runnable -->\n)?```(\w*)\n(.*?)```", re.S)


def _text(page):
    with open(page) as f:
        return f.read()


def _name(page):
    return os.path.relpath(page, ROOT)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_lead_to_files(page):
    text = BLOCK.sub("", _text(page))
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        if not os.path.exists(path):
            missing.append(target)
    assert missing == []


def test_the_readme_is_a_front_door():
    lines = _text(PAGES[0]).count("\n")
    assert lines <= 230, f"README.md has {lines} lines: move detail to a page in docs/"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_commands_name_modules_and_entries_that_exist(page):
    text = _text(page)
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        entries = set(re.findall(r"^(lmstream-[a-z]+) = ", f.read(), re.M))
    wrong = []
    for module in set(re.findall(r"-m (lmstream(?:\.[a-z_]+)+)", text)):
        try:
            if not hasattr(importlib.import_module(module), "main"):
                wrong.append(f"{module} has no main")
        except ImportError as err:
            wrong.append(f"{module}: {err}")
    wrong += [e for e in set(re.findall(r"\b(lmstream-(?:train|prepare|inspect|[a-z]+))\b(?![./\w-])", text))
              if e not in entries and not e.endswith(("demo", "ci"))]
    assert wrong == []


def _attribute_chains(code):
    """Every `lmstream.a.b` chain a Python block uses."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Attribute):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.insert(0, cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "lmstream":
                yield chain


def _resolves(chain):
    obj = importlib.import_module("lmstream")
    for i, part in enumerate(chain):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module("lmstream." + ".".join(chain[:i + 1]))
        except ImportError:
            return False
    return True


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_blocks_use_real_names(page):
    wrong = []
    for _, lang, code in BLOCK.findall(_text(page)):
        if lang == "python":
            wrong += [".".join(c) for c in _attribute_chains(code) if not _resolves(c)]
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmstream"):
                    module = importlib.import_module(node.module)
                    wrong += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                              and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert wrong == []


def _runnable():
    return [(f"{_name(p)}#{i}", code) for p in PAGES
            for i, (mark, lang, code) in enumerate(BLOCK.findall(_text(p))) if mark and lang == "python"]


@pytest.mark.parametrize("where,code", _runnable(), ids=[w for w, _ in _runnable()])
def test_runnable_blocks_run(where, code, tmp_path):
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]


def test_there_is_a_runnable_block():
    assert _runnable()


def _shape(line: str) -> str:
    line = re.sub(r"\S*/lmstream/assets/", ".../lmstream/assets/", line)
    line = re.sub(r"\[[#.]+\]", "[bar]", line)
    line = re.sub(r"\d[\d,.:]*[kM]?", "N", line)
    return re.sub(r" +", " ", line).strip()


def readme_terminal_lines() -> list[str]:
    block = re.search(r"```text\n\$ lmstream-train --output_dir runs/default\n(.*?)```", _text(PAGES[0]), re.S)
    return [line for line in block.group(1).splitlines() if line != "..."]


def terminal_lines_drifted(printed: list[str], output_dir: str) -> list[str]:
    """The README's terminal lines that have the shape of no line the job printed (into `output_dir`)."""
    shapes = {_shape(line.replace(output_dir, "runs/default")) for line in printed}
    return [line for line in readme_terminal_lines() if _shape(line) not in shapes]


def test_the_readme_shows_a_terminal():
    assert len(readme_terminal_lines()) >= 8
