"""Collectives in a compiled program's while loops, read from its optimized HLO text.

On a mesh, what runs inside the decode loop is paid every round or every draft step; a collective that
moves a KV cache there would cost a whole cache per step. `in_loop_collectives(compiled.as_text())`
lists every collective reachable from a while body, with its result shape and element count.
"""
from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_OP = re.compile(r"= (\(.*?\)|\S+) (" + "|".join(KINDS) + r")(?:-start)?\(")
_CALLEE = re.compile(r"(?:condition|body|to_apply|calls)=%?([\w.\-]+)")
_ARRAY = re.compile(r"[a-z]\w*\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    computation: str  # the HLO computation it sits in
    kind: str  # all-reduce, all-gather, ...
    shape: str  # result type as printed (a tuple for combined collectives)
    elements: int  # elements of the result, summed over a tuple


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    comps: dict[str, list[str]] = {}
    cur = None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            words = line.split()
            cur = words[1 if words[0] == "ENTRY" else 0].lstrip("%")
            comps[cur] = []
        elif cur is not None:
            comps[cur].append(line)
    return comps


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(shape))


def in_loop_collectives(hlo: str) -> list[Collective]:
    """Collectives in every computation reachable from a while loop's body (nested loops included)."""
    comps = computations(hlo)
    callees = {}
    for name, lines in comps.items():
        text = "\n".join(lines)
        branches = re.findall(r"branch_computations=\{([^}]*)\}", text)
        callees[name] = set(_CALLEE.findall(text)) | {b.strip().lstrip("%") for g in branches for b in g.split(",")}
    stack = [b for lines in comps.values() for line in lines if " while(" in line
             for b in re.findall(r"body=%?([\w.\-]+)", line)]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name not in seen and name in comps:
            seen.add(name)
            stack += callees[name]
    return [Collective(name, m.group(2), m.group(1), _elements(m.group(1)))
            for name in sorted(seen) for line in comps[name] if (m := _OP.search(line))]
