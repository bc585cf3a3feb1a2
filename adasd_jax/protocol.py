"""The decoder protocol: what the loop needs of a model, so that a research codebase's own decoder (a Flax NNX or
Linen module, or plain functions) runs every method. `adasd_jax.models.Decoder` is the reference implementation.

A decoder is a static, hashable object (a frozen dataclass): the jitted loop closes over it, so it is compiled once
per value. Its parameters travel apart, as a pytree.

    class MyDecoder(Protocol):
        vocab_size: int              # rows of the logits (may include padding rows past the tokenizer's size)
        max_len: int                 # the most positions a row may hold
        eos_ids: tuple[int, ...]     # tokens that end a row
        def init_cache(self, batch, max_len, dtype) -> cache
        def forward(self, params, tokens, cache, num_new, logits_index=None) -> (logits, cache)

The cache contract. A cache is a pytree (a flax.struct or dataclass pytree) with a field `lengths`, int32 [B]: row b
holds `lengths[b]` valid positions. `forward(params, tokens[B,T], cache, num_new[B], logits_index[B] | None)`:
- row b's token t sits at position `lengths[b] + t`: each row writes at its own length;
- attention at a position sees only that row's positions up to it: never positions past the row's length (stale
  entries left there by a rollback, or padding written past `num_new`, are invisible and get overwritten);
- returns float32 logits [B,T,V] (or [B,1,V] at `logits_index` only) and the cache with `lengths + num_new`;
- rolling back is lowering `lengths` (`with_lengths`): nothing else in the cache may record how far a row got.

Optional hooks:
- `head_rows(params, ids[N]) -> head` and `forward(..., head=head)` returning logits over those N tokens only:
  the output head of a `draft_vocab=N` draft (FR-Spec);
- `param_specs()`: a tree matching the parameters of specs (objects with `.shape` and `.axes`, one logical axis
  name per dimension), `cache_axes(cache)`: the cache's tree with each array replaced by its tuple of logical axis
  names, and `axis_counts()`: {axis: logical count} where a dimension fuses several (heads * head_dim). Sharding on a
  mesh (adasd_jax.sharding) reads them; without them the decoder runs on one device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct


@runtime_checkable
class Decoder(Protocol):
    vocab_size: int
    max_len: int
    eos_ids: tuple[int, ...]

    def init_cache(self, batch: int, max_len: int, dtype) -> Any: ...

    def forward(self, params, tokens: jax.Array, cache, num_new: jax.Array, logits_index: jax.Array | None = None,
                **hooks) -> tuple[jax.Array, Any]: ...


@struct.dataclass
class NoCache:
    """The draft's cache slot when a method runs without a draft."""

    lengths: jax.Array  # int32 [B]


def with_lengths(cache, lengths: jax.Array):
    """The cache rolled back (or forward) to `lengths`: the protocol's only way of moving a row."""
    return dataclasses.replace(cache, lengths=lengths.astype(jnp.int32))


def activation_dtype(decoder, params):
    """The dtype of a decoder's caches: its `activation_dtype(params)` hook, else its parameters' first floating
    dtype."""
    if has_hook(decoder, "activation_dtype"):
        return decoder.activation_dtype(params)
    return next(x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating))


def has_hook(decoder, name: str) -> bool:
    return callable(getattr(decoder, name, None))


def is_axes(x) -> bool:
    """A leaf of `cache_axes`: a tuple of logical axis names (or None)."""
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


class ProtocolError(ValueError):
    """A decoder that does not keep the protocol, with what to fix."""


def check(decoder, params, label: str, dtype=jnp.float32) -> None:
    """Run `decoder` once on a 2-row, 8-position cache (rows at different lengths) and refuse what the loop would
    silently get wrong: missing members, logits of the wrong shape or dtype, a cache without int32 [B] `lengths`,
    lengths that do not advance by `num_new`."""
    missing = [n for n in ("vocab_size", "max_len", "eos_ids", "init_cache", "forward") if not hasattr(decoder, n)]
    if missing:
        raise ProtocolError(f"{label}: {type(decoder).__name__} lacks {', '.join(missing)} of the decoder protocol "
                            "(adasd_jax.protocol)")
    try:
        hash(decoder)
    except TypeError as e:
        raise ProtocolError(f"{label}: the decoder must be hashable (a frozen dataclass): the loop is compiled per "
                            f"decoder value ({e})") from None
    B, S, V = 2, 8, decoder.vocab_size
    cache = decoder.init_cache(B, S, dtype)
    lengths = getattr(cache, "lengths", None)
    if lengths is None or jnp.shape(lengths) != (B,) or jnp.asarray(lengths).dtype != jnp.int32:
        raise ProtocolError(f"{label}: init_cache({B}, {S}, dtype) must return a cache with a field `lengths` of "
                            f"int32 [{B}], got {None if lengths is None else (jnp.shape(lengths), lengths.dtype)}")
    cache = with_lengths(cache, jnp.asarray([0, 2], jnp.int32))
    tokens, num_new = jnp.ones((B, 3), jnp.int32), jnp.asarray([3, 1], jnp.int32)
    for index, want in ((None, (B, 3, V)), (jnp.asarray([2, 0], jnp.int32), (B, 1, V))):
        logits, out = decoder.forward(params, tokens, cache, num_new, index)
        if logits.shape != want or logits.dtype != jnp.float32:
            call = f"forward(params, tokens[{B},3], cache, num_new, logits_index={'None' if index is None else '[B]'})"
            raise ProtocolError(f"{label}: {call} returned logits {logits.dtype}{list(logits.shape)}; the protocol "
                                f"wants float32{list(want)} (vocab_size={V})")
        got = [int(x) for x in getattr(out, "lengths", jnp.zeros(0))]
        if got != [3, 3]:
            raise ProtocolError(f"{label}: forward must advance each row's cache length by num_new: lengths [0, 2] "
                                f"with num_new [3, 1] should become [3, 3], got {got}")
