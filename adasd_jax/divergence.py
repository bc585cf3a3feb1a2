"""Entropy, Jensen-Shannon distance and the sampling transforms, on logits over the shared vocabulary."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LN2 = 0.6931471805599453


def entropy(logits: jax.Array) -> jax.Array:
    """H(softmax(logits)) in nats over the last axis, with 0 log 0 = 0."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def js_distance(p: jax.Array, q: jax.Array) -> jax.Array:
    """sqrt of the Jensen-Shannon divergence in bits between probability vectors (last axis), in [0, 1].

    Equals scipy.spatial.distance.jensenshannon(p, q, base=2); zeros in p or q are handled exactly.
    """
    p, q = p.astype(jnp.float32), q.astype(jnp.float32)
    m = 0.5 * (p + q)

    def kl_to_m(x):  # sum x log2(x / m), terms with x = 0 are 0
        safe = jnp.where(x > 0, x / jnp.where(m > 0, m, 1.0), 1.0)
        return jnp.sum(jnp.where(x > 0, x * jnp.log(safe), 0.0), axis=-1) / LN2

    jsd = 0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)
    return jnp.sqrt(jnp.clip(jsd, 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling settings; temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _filter(logits: jax.Array, s: Sampling) -> jax.Array:
    """Logits after temperature, top-k and top-p (removed tokens get -inf), not normalised."""
    x = logits.astype(jnp.float32) / (s.temperature if s.temperature > 0 else 1.0)
    if s.top_k > 0:
        kth = jax.lax.top_k(x, min(s.top_k, x.shape[-1]))[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if s.top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        cutoff = jnp.min(jnp.where(before < s.top_p, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < cutoff, -jnp.inf, x)
    return x


def transform(logits: jax.Array, s: Sampling) -> jax.Array:
    """Log-probabilities after temperature, top-k and top-p (removed tokens get -inf)."""
    return jax.nn.log_softmax(_filter(logits, s), axis=-1)


def argmax(logits: jax.Array) -> jax.Array:
    """First index of the largest logit (as jnp.argmax), as a max and a min: XLA:CPU runs these two plain
    reductions over 152k logits in half the time of argmax's (value, index) reduction."""
    V = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits == top, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(first, V - 1)  # a NaN row matches nothing; NaN rows are reported by the loop


SAMPLE_BLOCK = 1024


def sample(key: jax.Array, logits: jax.Array, block: int = SAMPLE_BLOCK) -> jax.Array:
    """One draw per row from softmax(logits) by inverse transform sampling in two levels: pick the block
    of `block` tokens holding a uniform u in the cumulative block masses, then the token inside it.

    Exact for the distribution (tokens of zero mass are never drawn) and one uniform per row instead of a
    Gumbel variate per token: 0.6 ms against 5 ms for jax.random.categorical over 152k logits on XLA:CPU.
    Also unbiased where categorical's default float32 Gumbel is not: tokens under ~1e-7 each, which on a
    confident step over 152k tokens hold about 1% of the mass, of which it draws about half.
    """
    lead, V = logits.shape[:-1], logits.shape[-1]
    n = -(-V // block)
    x = jnp.pad(logits.reshape(-1, V).astype(jnp.float32), ((0, 0), (0, n * block - V)), constant_values=-jnp.inf)
    R = x.shape[0]
    p = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)).reshape(R, n, block)
    cb = jnp.cumsum(p.sum(-1), axis=-1)  # [R, n] cumulative block masses; the largest token adds 1
    u = jnp.minimum(jax.random.uniform(key, (R,)) * cb[:, -1], jnp.nextafter(cb[:, -1], 0.0))
    j = jnp.sum(cb <= u[:, None], axis=-1)  # first block whose cumulative mass exceeds u
    below = jnp.where(j > 0, jnp.take_along_axis(cb, jnp.maximum(j - 1, 0)[:, None], 1)[:, 0], 0.0)
    ci = jnp.cumsum(jnp.take_along_axis(p, j[:, None, None], 1)[:, 0], axis=-1)  # [R, block]
    u_in = jnp.minimum(u - below, jnp.nextafter(ci[:, -1], 0.0))  # rounding must not step past the block's mass
    i = jnp.sum(ci <= u_in[:, None], axis=-1)
    return (j * block + i).astype(jnp.int32).reshape(lead)


def choose(key: jax.Array, logits: jax.Array, s: Sampling) -> jax.Array:
    """argmax when greedy, else a sample from the transformed distribution."""
    if s.greedy:
        return argmax(logits)
    return sample(key, _filter(logits, s))
