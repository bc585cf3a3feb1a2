"""The reference implementation of adasd_jax's decoder protocol (adasd_jax/protocol.py): a `Config` wrapped as a
static, hashable decoder. It only adapts `forward` and `init_cache`; nothing here imports adasd_jax."""
from __future__ import annotations

import dataclasses

import jax

from .config import Config
from .kv_cache import CACHE_AXES, KVCache, init_cache
from .transformer import activation_dtype, forward, param_specs, take_rows


@dataclasses.dataclass(frozen=True)
class Decoder:
    """One of this package's decoders (llama / mistral / qwen2 / qwen3) as the loop sees it."""

    config: Config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_len(self) -> int:
        return self.config.max_position_embeddings

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.config.eos_token_ids

    def init_cache(self, batch: int, max_len: int, dtype) -> KVCache:
        return init_cache(self.config, batch, max_len, dtype)

    def forward(self, params, tokens, cache, num_new=None, logits_index=None, head=None):
        return forward(params, self.config, tokens, cache, num_new, logits_index, head=head)

    def head_rows(self, params, ids: jax.Array) -> jax.Array:
        """The output matrix's rows for token ids [N] (a draft's vocabulary subset), for `forward(head=)`; an int8
        head's rows stay int8."""
        return take_rows(params["embed"] if self.config.tie_word_embeddings else params["lm_head"], ids)

    def activation_dtype(self, params):
        """The dtype activations and caches run in (the final norm's: an int8 model's matrices are int8)."""
        return activation_dtype(params)

    def param_specs(self):
        return param_specs(self.config)

    def axis_counts(self) -> dict[str, int]:
        """Heads are split whole, never inside a head: the fused [heads * head_dim] axes divide by head count."""
        return {"q_heads": self.config.num_heads, "kv_heads": self.config.num_kv_heads}

    def cache_axes(self, cache: KVCache) -> KVCache:
        """The cache's logical axes: each leaf replaced by one axis name per dimension (for sharding)."""
        return KVCache(k=(CACHE_AXES,) * len(cache.k), v=(CACHE_AXES,) * len(cache.v), lengths=("batch",))
