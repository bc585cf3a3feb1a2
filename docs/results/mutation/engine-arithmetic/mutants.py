"""Mutation check of the tests: apply each mutant in `mutants.tsv` (one small wrong change to the engine) to a clean
clone of HEAD, and run its tests with `-x`. A mutant that passes is a behaviour no test pins down.

    python docs/results/mutation/engine-arithmetic/mutants.py [--table TSV] [--rev COMMIT] [--only NAME ...]

(the 2026-11-28 table of loader, bucketing, sharding and fetch mutants: --table docs/results/mutation/loaders-buckets-sharding/mutants.tsv)

Prints one line per mutant: killed (and by which test) or SURVIVED, with the seconds its tests took.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def mutants(path: Path) -> list[tuple[str, str, str, str, str]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines(True)
            if line.strip() and not line.startswith("#")]
    for r in rows:
        if len(r) != 5:
            raise ValueError(f"{path}: need 5 tab-separated fields (name, file, code, mutated code, tests), got {r}")
    return [tuple(r) for r in rows]


def run(name: str, file: str, old: str, new: str, tests: str, timeout: int, rev: str = "HEAD") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "-q", rev], check=True)
        src = work / file
        text = src.read_text()
        if text.count(old) != 1:
            return f"{name}: NOT APPLIED ({old!r} occurs {text.count(old)} times in {file}, need once)"
        src.write_text(text.replace(old, new))
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                *shlex.split(tests)], cwd=work, capture_output=True, text=True, timeout=timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            return f"{name}: TIMED OUT after {timeout}s"
        secs = time.perf_counter() - t
    failed = re.search(r"^FAILED (\S+)", p.stdout, re.MULTILINE)
    if p.returncode == 0:
        return f"{name}: SURVIVED ({secs:.0f}s)"
    return f"{name}: killed by {failed.group(1) if failed else f'pytest rc {p.returncode}'} ({secs:.0f}s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="mutant names (default: all)")
    ap.add_argument("--timeout", type=int, default=1500)
    ap.add_argument("--table", type=Path, default=HERE / "mutants.tsv", help="tab-separated mutants")
    ap.add_argument("--rev", default="HEAD", help="the commit whose code and tests are mutated (an older one shows "
                                                 "whether its tests already caught a mutant)")
    a = ap.parse_args()
    for name, file, old, new, tests in mutants(a.table):
        if not a.only or name in a.only:
            print(run(name, file, old, new, tests, a.timeout, a.rev), flush=True)


if __name__ == "__main__":
    main()
