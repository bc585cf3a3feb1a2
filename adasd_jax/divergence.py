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


def transform(logits: jax.Array, s: Sampling) -> jax.Array:
    """Log-probabilities after temperature, top-k and top-p (removed tokens get -inf)."""
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
    return jax.nn.log_softmax(x, axis=-1)


def choose(key: jax.Array, logits: jax.Array, s: Sampling) -> jax.Array:
    """argmax when greedy, else a sample from the transformed distribution."""
    if s.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, transform(logits, s), axis=-1).astype(jnp.int32)
