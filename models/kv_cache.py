"""Static-shape KV cache with per-row lengths: rows of one batch sit at different positions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from .config import Config

CACHE_AXES = ("batch", "seq", "kv_heads", "head_dim")  # of each layer's k and v


@struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # L arrays [B, S, K, hd] (one per layer: no slicing of a stacked cache)
    v: tuple[jax.Array, ...]
    lengths: jax.Array  # int32 [B]: valid prefix of each row; rolling back a row is lowering it

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    def with_lengths(self, lengths: jax.Array) -> "KVCache":
        return self.replace(lengths=lengths.astype(jnp.int32))


def cache_axes() -> KVCache:
    """Logical axes of each cache field (for sharding)."""
    return KVCache(k=(CACHE_AXES,), v=(CACHE_AXES,), lengths=("batch",))


def init_cache(c: Config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, max_len, c.num_kv_heads, c.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
    return KVCache(k=zeros(), v=zeros(), lengths=jnp.zeros((batch,), jnp.int32))
