"""`--methods` as the benchmark reads it: the default list, the presets, and the split of a comma list into
validated method specs (before any model loads)."""
from __future__ import annotations

from adasd_jax.bench import peers
from adasd_jax.method import Method
from adasd_jax.validate import METHODS

DEFAULT_METHODS = "ar,sd:K=2,sd:K=4,sd:K=8,adasd,adasd:stop=cost"
# AdaSD's components apart (docs/algorithm.md): sd:K=16 is adasd with both switches off (K_max = 16).
PRESETS = {"ablation": ["ar", "sd:K=4", "sd:K=16", "adasd:js_accept=0", "adasd:entropy_stop=0", "adasd",
                        "adasd:stats_on=final", "adasd:count_declined=0"]}


def _is_method_start(token: str) -> bool:
    name = token.partition(":")[0]
    return name in METHODS or name in peers.PEERS or name in PRESETS


def split_methods(spec: str) -> list[str]:
    """'ar,sd:K=4,adasd:count_declined=0,entropy_stop=0' -> ['ar', 'sd:K=4', 'adasd:count_declined=0,entropy_stop=0'].

    A comma starts a new method only before a method name; `key=value` items belong to the method before.
    Presets expand in place; duplicates are dropped; every method is validated here, before any model loads.
    """
    out: list[str] = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        if _is_method_start(token):
            out.append(token)
        elif out and ":" in out[-1] and "=" in token:
            out[-1] += "," + token
        else:
            raise ValueError(f"bad --methods item {token!r}: expected a method ({', '.join(METHODS + peers.PEERS)}, "
                             f"or a preset: {', '.join(PRESETS)}), or a key=value option after 'method:'")
    methods: list[str] = []
    for m in out:
        for x in PRESETS.get(m, [m]):
            if x not in peers.PEERS:
                Method.parse(x)
            if x not in methods:
                methods.append(x)
    return methods
