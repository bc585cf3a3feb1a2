"""Explicit state carried through the jitted loop: frozen dataclass pytrees, shapes in comments.

B = batch rows, K = k_max (draft buffer), V = vocabulary, O = output buffer length, R = trace rounds.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class CostTable:
    """What the hardware charges, in units of one target decode step (one row, T=1): a dynamic input of the loop,
    so a new table never recompiles. Measured on the compiled programs at warm-up (engine.cost_table)."""

    draft: jax.Array  # f32 []: one draft step (c_d)
    verify: jax.Array  # f32 [W]: one verification at each static width of LoopConfig.widths (V(w), w + 1 rows)

    @classmethod
    def flat(cls, widths: int, draft: float = 1.0) -> "CostTable":
        return cls(draft=jnp.float32(draft), verify=jnp.ones((widths,), jnp.float32))


@struct.dataclass
class ThresholdState:
    """AdaSD's running means as (sum, count) pairs, and the cost-aware stop's acceptance model and rate.

    Scalars are shape [] when pooled over rows, [B] when per_row; the signal bins add a trailing axis [.., N].
    """

    acc_n: jax.Array  # i32: accepted (strict) tokens
    acc_sum: jax.Array  # f32: their JS distances
    acc_ent_sum: jax.Array  # f32: their draft entropies (nats); only t_g_rule="midpoint" reads it
    rej_n: jax.Array  # i32: rejected tokens
    rej_sum: jax.Array  # f32: their JS distances
    rej_ent_sum: jax.Array  # f32: their draft entropies (nats): T_G's mean
    # the cost-aware stop (stop="cost"): verdicts by draft-signal bin, emitted meaning strict or lossy
    bin_n: jax.Array  # f32 [.., N]: proposals (and declined tokens) whose verdict was computed
    bin_acc: jax.Array  # f32 [.., N]: of those, the ones the round's verdict accepted
    rate_tokens: jax.Array  # f32: tokens emitted ...
    rate_cost: jax.Array  # f32: ... and what they cost (target steps, from the cost table): the running rate R

    @classmethod
    def init(cls, shape=(), bins: int = 32) -> "ThresholdState":
        f, i, b = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.int32), jnp.zeros((*shape, bins), jnp.float32)
        return cls(acc_n=i, acc_sum=f, acc_ent_sum=f, rej_n=i, rej_sum=f, rej_ent_sum=f, bin_n=b, bin_acc=b,
                   rate_tokens=f, rate_cost=f)

    @property
    def bins(self) -> int:
        return self.bin_n.shape[-1]

    @property
    def t_g(self) -> jax.Array:
        """Generation threshold: mean entropy of rejected tokens, +inf while there are none."""
        return jnp.where(self.rej_n > 0, self.rej_ent_sum / jnp.maximum(self.rej_n, 1), jnp.inf)

    @property
    def t_g_midpoint(self) -> jax.Array:
        """Not the spec's T_G: the midpoint of the accepted and rejected mean entropies (T_V's rule on entropies),
        +inf until both exist."""
        both = (self.acc_n > 0) & (self.rej_n > 0)
        mid = 0.5 * (self.acc_ent_sum / jnp.maximum(self.acc_n, 1) + self.t_g)
        return jnp.where(both, mid, jnp.inf)

    @property
    def t_v(self) -> jax.Array:
        """Verification threshold: midpoint of the accepted and rejected mean JS distances, else 0."""
        both = (self.acc_n > 0) & (self.rej_n > 0)
        mid = 0.5 * (self.acc_sum / jnp.maximum(self.acc_n, 1) + self.rej_sum / jnp.maximum(self.rej_n, 1))
        return jnp.where(both, mid, 0.0)

    def __add__(self, other: "ThresholdState") -> "ThresholdState":
        return jax.tree.map(jnp.add, self, other)


@struct.dataclass
class MethodState:
    """Everything a policy adapts online. Every method carries all fields; each uses its own."""

    thresholds: ThresholdState  # adasd
    draft_len: jax.Array  # i32 [B]: dynamic's current K
    edl_lambda: jax.Array  # f32 [B]: AdaEDL's stopping threshold
    edl_rate: jax.Array  # f32 [B]: AdaEDL's smoothed acceptance rate


@struct.dataclass
class Metrics:
    """Per-row counters, all i32 [B]."""

    new_tokens: jax.Array
    rounds: jax.Array  # target verification calls (the prefill is one more target call)
    drafted: jax.Array  # proposals sent to verification
    accepted: jax.Array  # proposals emitted (strict or lossy)
    strict: jax.Array  # proposals the target itself accepted
    lossy: jax.Array  # proposals accepted only by the JS threshold (adasd) or by tau (fsd)
    declined: jax.Array  # rounds in which the entropy rule stopped drafting
    nan: jax.Array  # 1 if NaN logits were met (the row stops without emitting them)
    draft_steps: jax.Array  # draft forwards the row took part in (its q computations, proposed or not)

    @classmethod
    def zeros(cls, batch: int) -> "Metrics":
        z = jnp.zeros((batch,), jnp.int32)
        return cls(*(z,) * 9)


@struct.dataclass
class Trace:
    """Optional per-round record for plots; rows beyond `rounds` are zero. The per-position fields cost passes over
    the vocabulary that a method may not make otherwise (sd reads no divergence): a timed run records the rounds
    only (LoopConfig.trace="rounds"), and they are None."""

    draft_len: jax.Array  # i32 [R, B]
    accepted: jax.Array  # i32 [R, B]
    entropy: jax.Array | None  # f32 [R, B, K+1]: H(q_i) for i = 1..n+1
    signal: jax.Array | None  # f32 [R, B, K+1]: what the cost-aware stop's model read of q_i (policies.draft_signal)
    js: jax.Array | None  # f32 [R, B, K+1]: d(p_i, q_i)
    t_g: jax.Array  # f32 [R, B]: thresholds in force during the round
    t_v: jax.Array  # f32 [R, B]


@struct.dataclass
class LoopState:
    """The whole generation state; one `round_step` maps it to the next."""

    target_cache: Any  # the target decoder's cache (adasd_jax.protocol): holds every committed token except `last`
    draft_cache: Any  # the draft's (protocol.NoCache without a draft): holds every committed token except `pending`
    last: jax.Array  # i32 [B]: newest committed token (the next verification's first input)
    pending: jax.Array  # i32 [B, 2]: the last committed tokens the draft has not consumed yet
    n_pending: jax.Array  # i32 [B]: how many it has not consumed: 1 or 2, more after rounds that skipped the draft
    # (stop="cost"); they are always out[new_tokens - n_pending : new_tokens]
    out: jax.Array  # i32 [B, O]: emitted tokens
    done: jax.Array  # bool [B]
    method: MethodState
    metrics: Metrics
    key: jax.Array  # PRNG key
    step: jax.Array  # i32: rounds run so far
    trace: Trace | None = None
