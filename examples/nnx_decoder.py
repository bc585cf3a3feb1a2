"""Bring your own model: a Llama decoder written here as a Flax NNX module, loaded with SmolLM2-135M's real weights,
run by adasd-jax as target and as a draft made of its first layers, through the public API only.

    python examples/nnx_decoder.py [SmolLM2-135M-Instruct.gguf] [--draft-layers 20] [--max-new-tokens 48]

Without a path, the GGUF (98 MB, hash-pinned) is fetched once into adasd-jax's cache. The module, its cache layout
(one stacked [layers, B, S, kv_heads, head_dim] array, unlike adasd_jax.models' per-layer tuples) and its forward are
this file's own; adasd-jax only reads the checkpoint into arrays. In float32, greedy `sd` must equal `ar`.
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

import adasd_jax
import adasd_jax.nnx
from adasd_jax import models


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rope_theta: float = 10000.0
    eps: float = 1e-5
    tied: bool = True

    def init_cache(self, batch: int, max_len: int, dtype) -> "Cache":
        """The protocol's init_cache: a bound method of a frozen dataclass hashes by value."""
        shape = (self.layers, batch, max_len, self.kv_heads, self.head_dim)
        return Cache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), lengths=jnp.zeros((batch,), jnp.int32))


@struct.dataclass
class Cache:
    k: jax.Array  # [L, B, S, K, hd]
    v: jax.Array
    lengths: jax.Array  # int32 [B]: the protocol's only record of how far each row got


def rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    return (w * (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps))).astype(x.dtype)


def rope(x, pos, theta):
    """Rotate-half RoPE at absolute positions pos [B,T]; x [B,T,N,hd]."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)
    ang = pos[..., None].astype(jnp.float32) * inv
    cos, sin = [jnp.concatenate([f(ang)] * 2, -1)[:, :, None, :].astype(x.dtype) for f in (jnp.cos, jnp.sin)]
    return x * cos + jnp.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin


class Block(nnx.Module):
    def __init__(self, c: LlamaConfig, rngs: nnx.Rngs, scale: float = 0.02):
        w = lambda *shape: nnx.Param(scale * jax.random.normal(rngs.params(), shape))
        self.c = c
        self.attn_norm, self.mlp_norm = nnx.Param(jnp.ones(c.dim)), nnx.Param(jnp.ones(c.dim))
        self.wq, self.wk = w(c.heads * c.head_dim, c.dim), w(c.kv_heads * c.head_dim, c.dim)
        self.wv, self.wo = w(c.kv_heads * c.head_dim, c.dim), w(c.dim, c.heads * c.head_dim)
        self.w_gate, self.w_up, self.w_down = w(c.ffn, c.dim), w(c.ffn, c.dim), w(c.dim, c.ffn)

    def __call__(self, x, k_cache, v_cache, pos, mask):
        c, (B, T, _) = self.c, x.shape
        h = rms_norm(x, self.attn_norm[...], c.eps)
        q = rope((h @ self.wq[...].T).reshape(B, T, c.heads, c.head_dim), pos, c.rope_theta)
        k = rope((h @ self.wk[...].T).reshape(B, T, c.kv_heads, c.head_dim), pos, c.rope_theta)
        v = (h @ self.wv[...].T).reshape(B, T, c.kv_heads, c.head_dim)
        rows = jnp.arange(B)[:, None]
        k_cache = k_cache.at[rows, pos].set(k.astype(k_cache.dtype), mode="drop")  # each row at its own length
        v_cache = v_cache.at[rows, pos].set(v.astype(v_cache.dtype), mode="drop")
        group = c.heads // c.kv_heads
        keys, values = jnp.repeat(k_cache, group, axis=2), jnp.repeat(v_cache, group, axis=2)
        scores = jnp.einsum("bthd,bshd->bhts", q, keys).astype(jnp.float32) * c.head_dim ** -0.5
        scores = jnp.where(mask[:, None], scores, -jnp.inf)  # never a position past the row's own
        attn = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1).astype(x.dtype), values)
        x = x + attn.reshape(B, T, -1) @ self.wo[...].T
        h = rms_norm(x, self.mlp_norm[...], c.eps)
        return x + (jax.nn.silu(h @ self.w_gate[...].T) * (h @ self.w_up[...].T)) @ self.w_down[...].T, k_cache, v_cache


class Llama(nnx.Module):
    def __init__(self, c: LlamaConfig, rngs: nnx.Rngs, scale: float = 0.02, embed_scale: float = 1.0):
        self.c = c
        self.embed = nnx.Param(embed_scale * jax.random.normal(rngs.params(), (c.vocab, c.dim)))
        self.blocks = nnx.List([Block(c, rngs, scale) for _ in range(c.layers)])
        self.final_norm = nnx.Param(jnp.ones(c.dim))
        if not c.tied:
            self.lm_head = nnx.Param(embed_scale * jax.random.normal(rngs.params(), (c.vocab, c.dim)))

    def head_rows(self, ids):
        """The output rows of a token subset (a draft_vocab draft)."""
        return (self.embed if self.c.tied else self.lm_head)[...][ids]

    def __call__(self, tokens, cache: Cache, num_new=None, logits_index=None, head=None):
        """The protocol's forward: float32 logits [B,T,V] ([B,1,V] at logits_index), lengths advanced by num_new."""
        B, T = tokens.shape
        pos = cache.lengths[:, None] + jnp.arange(T)[None]
        mask = jnp.arange(cache.k.shape[2])[None, None, :] <= pos[:, :, None]  # [B,T,S]
        x = self.embed[...][tokens]
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cache.k[i], cache.v[i], pos, mask)
            ks.append(k)
            vs.append(v)
        if logits_index is not None:
            x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)
        x = rms_norm(x, self.final_norm[...], self.c.eps)
        if head is None:
            head = (self.embed if self.c.tied else self.lm_head)[...]
        logits = (x @ head.T).astype(jnp.float32)
        advance = jnp.full((B,), T, jnp.int32) if num_new is None else num_new.astype(jnp.int32)
        return logits, Cache(k=jnp.stack(ks), v=jnp.stack(vs), lengths=cache.lengths + advance)


def from_checkpoint(path: str, layers: int | None = None):
    """(module, config, tokenizer, eos ids): a checkpoint read into arrays by adasd-jax's loader, copied into the NNX
    module above (the first `layers` layers only, for a draft)."""
    config, params, tokenizer = models.load(path, "float32")
    if config.rope_llama3 is not None or config.qkv_bias or config.qk_norm:
        raise SystemExit(f"{path}: this example's Llama has plain RoPE, no biases and no q/k norms")
    c = LlamaConfig(vocab=config.vocab_size, dim=config.hidden_size, layers=layers or config.num_layers,
                    heads=config.num_heads, kv_heads=config.num_kv_heads, head_dim=config.head_dim,
                    ffn=config.intermediate_size, rope_theta=config.rope_theta, eps=config.rms_norm_eps,
                    tied=config.tie_word_embeddings)
    module = nnx.eval_shape(lambda: Llama(c, nnx.Rngs(0)))  # no random init of 135M parameters: filled below
    module.embed, module.final_norm = nnx.Param(params["embed"]), nnx.Param(params["final_norm"])
    if not c.tied:
        module.lm_head = nnx.Param(params["lm_head"])
    for block, lp in zip(module.blocks, params["layers"]):
        for name, value in lp.items():
            setattr(block, name, nnx.Param(value))
    return module, c, tokenizer, config.eos_token_ids, config.max_position_embeddings


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="?", help="SmolLM2-135M-Instruct GGUF (default: fetched into adasd-jax's cache)")
    ap.add_argument("--draft-layers", type=int, default=20, help="the draft: the target's first N layers (of 30)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()
    if a.gguf is None:
        from adasd_jax.fetch import SMOLLM2, fetch
        a.gguf = str(fetch(SMOLLM2))
    t_module, tc, tok, eos, max_len = from_checkpoint(a.gguf)
    d_module, dc, _, _, _ = from_checkpoint(a.gguf, a.draft_layers)
    target, t_params = adasd_jax.nnx.decoder(t_module, tc.init_cache, tc.vocab, max_len, eos)
    draft, d_params = adasd_jax.nnx.decoder(d_module, dc.init_cache, dc.vocab, max_len, eos)
    pair = adasd_jax.make_pair(target, t_params, draft=draft, draft_params=d_params, tokenizer=tok)
    prompts = ["What is 12 times 7?", "Name three primary colours."]
    outs = {}
    for method in ("ar", "sd:K=4", "adasd"):
        out = adasd_jax.generate(pair, prompts, method=method, max_new_tokens=a.max_new_tokens)
        outs[method] = out
        s = out.summary()
        print(f"{method:7s} tokens/target call {s['tokens_per_call']:.2f}  accepted {s['accepted']}/{s['drafted']}  "
              f"lossy {s['lossy']}  compile {out.compile_s:.1f} s  run {out.run_s:.1f} s")
        print(f"        {out.texts[0]!r}")
    same = outs["sd:K=4"].tokens == outs["ar"].tokens
    print(f"greedy sd == ar (float32): {same}")
    if not same:
        raise SystemExit("greedy sd differs from ar: the decoder breaks the cache contract (adasd_jax.protocol)")


if __name__ == "__main__":
    main()
