"""Refuse to test from an environment that leans on the base interpreter: every requirement of the project
must be installed in the running venv itself (a venv made with --system-site-packages, or a base Python that
happens to hold the packages, hid a missing install step once)."""
import importlib.metadata as md
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements(path):
    """Distribution names from a requirements file, following -r includes, markers applied."""
    from packaging.requirements import Requirement
    names = []
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names += requirements(os.path.join(os.path.dirname(path), line[2:].strip()))
        elif line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                names.append(req.name)
    return names


def main() -> int:
    if sys.prefix == sys.base_prefix:
        print("error: run CI from a virtual environment (.ci/run makes one).", file=sys.stderr)
        return 2
    prefix = os.path.realpath(sys.prefix)
    outside = []
    for name in requirements(os.path.join(ROOT, "requirements-dev.txt")):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            outside.append(f"{name} (not installed)")
            continue
        where = os.path.realpath(str(dist.locate_file("")))
        if not where.startswith(prefix + os.sep):
            outside.append(f"{name} ({where})")
    if outside:
        print(f"error: not installed in the venv {prefix}: {', '.join(outside)}", file=sys.stderr)
        return 2
    base = re.escape(os.path.realpath(sys.base_prefix))
    leaks = [p for p in sys.path if re.match(base + r".*site-packages", os.path.realpath(p))]
    if leaks:
        print(f"error: the base interpreter's site-packages is on sys.path: {leaks}", file=sys.stderr)
        return 2
    print(f"ci: {len(requirements(os.path.join(ROOT, 'requirements-dev.txt')))} requirements, all from {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
