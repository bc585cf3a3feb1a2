"""A decoding method and its switches: a static, hashable description checked when it is built. Plain Python (no
JAX), so the command line and the Python API refuse a bad method before anything heavy loads; the rules that read
it are in `policies`."""
from __future__ import annotations

import dataclasses

from adasd_jax import validate


@dataclasses.dataclass(frozen=True)
class Method:
    """A decoding method and its switches (docs/algorithm.md)."""

    name: str = "adasd"
    k: int = 4  # sd/fsd: fixed draft length; dynamic: start value is DYNAMIC_K0
    k_max: int = 16  # static draft buffer and safety cap
    tau: float = 0.3  # fsd: fixed JS threshold
    stats_on: str = "strict"  # adasd: classify statistics by the "strict" or the "final" verdict
    count_declined: bool = True  # adasd: verdict on the token the entropy rule declined
    propose_declined: bool = False  # adasd/adaedl: still propose the token whose entropy stopped drafting (not the spec)
    entropy_stop: bool = True  # adasd ablation: T_G (off: draft k_max)
    t_g_rule: str = "mean"  # adasd: T_G = mean rejected entropy (the spec), or "midpoint" of accepted and rejected (not the spec)
    js_accept: bool = True  # adasd ablation: T_V (off: strict acceptance only)
    per_row: bool = False  # adasd: one threshold state per row instead of pooled over the batch
    draft_vocab: int = 0  # any drafting method: the draft scores only the pair's N most frequent tokens (0: all)
    stop: str = "entropy"  # adasd: "entropy" (the paper's T_G) or "cost" (the cost-aware stop, not the paper)
    bins: int = 32  # adasd stop=cost: signal bins of the acceptance model (a representation, not a knob)
    signal: str = "top1"  # adasd stop=cost: what the acceptance model bins, the draft's top-1 surprisal or its entropy

    def __post_init__(self):
        fields = dataclasses.fields(self)
        validate.method_fields(self.name, {f.name: getattr(self, f.name) for f in fields},
                               {f.name: f.default for f in fields})
        if self.stop == "cost" and (self.propose_declined or not self.entropy_stop):
            raise validate.InputError("stop=cost decides proposing itself: it does not combine with propose_declined "
                                      "or entropy_stop=0")
        if self.stop != "cost" and self.signal != "top1":
            raise validate.InputError(f"signal={self.signal} is read by the cost-aware stop only: add stop=cost, or "
                                      "drop signal (the paper's rule stops on the entropy)")

    @classmethod
    def parse(cls, spec: str) -> "Method":
        """'adasd', 'sd:K=4', 'fsd:tau=0.3,K=5', 'adasd:count_declined=0,stats_on=final' (options: validate.OPTIONS)."""
        name, kw = validate.method_options(spec)
        return cls(name=name, **({"k": 5} if name in ("fsd", "dynamic") else {}) | kw)

    @property
    def uses_draft(self) -> bool:
        return self.name != "ar"

    @property
    def lossless(self) -> bool:
        return self.name in ("ar", "sd", "dynamic", "adaedl") or (
            self.name == "adasd" and not self.js_accept)

    @property
    def cost_aware(self) -> bool:
        return self.name == "adasd" and self.stop == "cost"

    @property
    def cap(self) -> int:
        """Static bound on proposals per round (the widest verification)."""
        return {"ar": 0, "sd": self.k, "fsd": self.k}.get(self.name, self.k_max)
