"""Methods as small pure policies plugged into the one loop: when to stop drafting, how to accept,
how to update the method's state. A `Method` is static (hashable) and selects the policy at trace time.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adasd_jax import validate
from adasd_jax.state import MethodState, ThresholdState
from adasd_jax.validate import METHODS

# Hugging Face assisted generation's heuristic draft length
DYNAMIC_K0, DYNAMIC_UP, DYNAMIC_DOWN = 5, 2, 1
# AdaEDL (arXiv 2410.18351): gamma from the paper; lambda's online update reconstructed (see the spec)
EDL_GAMMA, EDL_LAMBDA0, EDL_RATE0, EDL_TARGET, EDL_STEP, EDL_RATE_EMA, EDL_LAMBDA_EMA = 0.2, 0.5, 0.9, 0.9, 0.01, 0.5, 0.9


@dataclasses.dataclass(frozen=True)
class Method:
    """A decoding method and its switches (see docs: adasd-spec)."""

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

    def __post_init__(self):
        fields = dataclasses.fields(self)
        validate.method_fields(self.name, {f.name: getattr(self, f.name) for f in fields},
                               {f.name: f.default for f in fields})

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
    def cap(self) -> int:
        """Static bound on proposals per round (the widest verification)."""
        return {"ar": 0, "sd": self.k, "fsd": self.k}.get(self.name, self.k_max)


def init_state(m: Method, batch: int) -> MethodState:
    return MethodState(
        thresholds=ThresholdState.init((batch,) if m.per_row else ()),
        draft_len=jnp.full((batch,), min(DYNAMIC_K0, m.k_max), jnp.int32),
        edl_lambda=jnp.full((batch,), EDL_LAMBDA0, jnp.float32),
        edl_rate=jnp.full((batch,), EDL_RATE0, jnp.float32),
    )


def draft_cap(m: Method, s: MethodState) -> jax.Array:
    """Per-row proposal limit this round, i32 [B]."""
    if m.name == "dynamic":
        return s.draft_len
    return jnp.full_like(s.draft_len, m.cap)


def t_g(m: Method, t: ThresholdState) -> jax.Array:
    """The generation threshold in force under the method's rule."""
    return t.t_g_midpoint if m.t_g_rule == "midpoint" else t.t_g


def stop_drafting(m: Method, s: MethodState, ent: jax.Array) -> jax.Array:
    """Entropy rules, bool [B]: True means the token with draft entropy `ent` is not proposed."""
    if m.name == "adasd" and m.entropy_stop:
        return ent > t_g(m, s.thresholds)
    if m.name == "adaedl":
        return 1.0 - jnp.sqrt(EDL_GAMMA * ent) < s.edl_lambda
    return jnp.zeros(ent.shape, bool)


def accept(m: Method, strict: jax.Array, d: jax.Array, t_v: jax.Array) -> jax.Array:
    """Final verdict per position from the strict verdict and the JS distance."""
    if m.name == "fsd":
        return d <= m.tau
    if m.name == "adasd" and m.js_accept:
        return strict | (d < t_v)
    return strict


def residual_on_reject(m: Method) -> bool:
    """Sampling after a rejection: the lossless residual, or (fsd) a plain sample from the target."""
    return m.name != "fsd"


def threshold_contribution(m: Method, verdict: jax.Array, d: jax.Array, ent: jax.Array,
                           counted: jax.Array) -> ThresholdState:
    """One row's statistics from its verdicts at the `counted` positions (arrays over positions)."""
    good, bad = counted & verdict, counted & ~verdict
    f = lambda x, w: jnp.sum(jnp.where(w, x, 0.0))
    n = lambda w: w.sum().astype(jnp.int32)
    return ThresholdState(acc_n=n(good), acc_sum=f(d, good), acc_ent_sum=f(ent, good),
                          rej_n=n(bad), rej_sum=f(d, bad), rej_ent_sum=f(ent, bad))


def add_contributions(m: Method, t: ThresholdState, rows: ThresholdState, live: jax.Array) -> ThresholdState:
    """Fold per-row contributions [B] into the state: summed over rows when pooled (order-free)."""
    rows = jax.tree.map(lambda x: jnp.where(live, x, 0), rows)
    if not m.per_row:
        rows = jax.tree.map(lambda x: x.sum(0), rows)
    return t + rows


def update(m: Method, s: MethodState, contrib: ThresholdState, proposed: jax.Array, accepted: jax.Array,
           live: jax.Array) -> MethodState:
    """After a round: fold statistics (adasd), adapt K (dynamic) or lambda (adaedl). Rows not `live` keep theirs."""
    if m.name == "adasd":
        s = s.replace(thresholds=add_contributions(m, s.thresholds, contrib, live))
    if m.name == "dynamic":
        k = jnp.where(accepted == proposed, s.draft_len + DYNAMIC_UP, s.draft_len - DYNAMIC_DOWN)
        s = s.replace(draft_len=jnp.where(live, jnp.clip(k, 1, m.k_max), s.draft_len))
    if m.name == "adaedl":
        seen = live & (proposed > 0)
        rate = EDL_RATE_EMA * s.edl_rate + (1 - EDL_RATE_EMA) * accepted / jnp.maximum(proposed, 1)
        raw = jnp.where(rate < EDL_TARGET, s.edl_lambda + EDL_STEP, s.edl_lambda - EDL_STEP)
        lam = jnp.clip(EDL_LAMBDA_EMA * s.edl_lambda + (1 - EDL_LAMBDA_EMA) * raw, 0.0, 1.0)
        s = s.replace(edl_rate=jnp.where(seen, rate, s.edl_rate), edl_lambda=jnp.where(seen, lam, s.edl_lambda))
    return s
