"""A Flax NNX module as a decoder of the protocol (adasd_jax/protocol.py).

    decoder, params = adasd_jax.nnx.decoder(module, init_cache=my_init_cache, vocab_size=V, max_len=S, eos_ids=(2,))
    pair = adasd_jax.make_pair(decoder, params, draft=..., draft_params=..., tokenizer=tok)

The module's `__call__(tokens[B,T], cache, num_new[B], logits_index[B] | None)` keeps the protocol's forward contract
(float32 logits, the cache with lengths advanced by num_new) and must not mutate the module: the loop passes the
parameters in and out as a pytree (`nnx.split`), so a module that updates its own variables would lose the update.
A module with a `head_rows(ids)` method whose `__call__` takes `head=` can be a `draft_vocab` draft (FR-Spec).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx


@dataclasses.dataclass(frozen=True)
class NNXDecoder:
    """Static and hashable: the module's graph definition (its structure, no arrays) and the protocol's constants."""

    graphdef: Any  # nnx.GraphDef
    cache_fn: Callable  # (batch, max_len, dtype) -> cache: a module-level function (hashable)
    vocab_size: int
    max_len: int
    eos_ids: tuple[int, ...] = ()

    def init_cache(self, batch: int, max_len: int, dtype):
        return self.cache_fn(batch, max_len, dtype)

    def forward(self, params, tokens, cache, num_new=None, logits_index=None, head=None):
        module = nnx.merge(self.graphdef, params)
        return module(tokens, cache, num_new, logits_index, **({} if head is None else {"head": head}))


@dataclasses.dataclass(frozen=True)
class NNXHeadDecoder(NNXDecoder):
    """An NNXDecoder whose module has `head_rows(ids)`: it can draft over a token subset (draft_vocab)."""

    def head_rows(self, params, ids):
        return nnx.merge(self.graphdef, params).head_rows(ids)


def decoder(module: nnx.Module, init_cache: Callable, vocab_size: int, max_len: int, eos_ids=()):
    """(decoder, params) for an NNX module: the parameters are the module's state (`nnx.split`)."""
    graphdef, params = nnx.split(module)
    cls = NNXHeadDecoder if callable(getattr(module, "head_rows", None)) else NNXDecoder
    return cls(graphdef, init_cache, int(vocab_size), int(max_len), tuple(int(e) for e in eos_ids)), params
