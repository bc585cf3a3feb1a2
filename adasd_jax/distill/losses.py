"""Distillation's objective and its optimisation: the hyperparameters, the divergences (forward KL, total
variation) over teacher-forced logits, AdamW on a warmup + cosine schedule, and the jitted train step."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from adasd_jax import models

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Static training hyperparameters (everything that shapes the optimisation)."""

    steps: int = 500
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-4
    warmup: int = 20
    end_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.01
    clip: float = 1.0  # global gradient norm
    loss: str = "kl"  # kl: forward KL(target || draft) | tv: total variation
    compute_dtype: str = "bfloat16"
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        models.parse_dtype(self.compute_dtype)


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: optimizer steps taken
    params: Params  # float32 master weights of the draft
    opt_state: Any  # optax state (AdamW moments, schedule count)


# ---------------------------------------------------------------- loss

def forward_kl(target_logits: jax.Array, draft_logits: jax.Array) -> jax.Array:
    """KL(p_target || q_draft) per position, [B,T] from logits [B,T,V] (float32)."""
    logp = jax.nn.log_softmax(target_logits, axis=-1)
    logq = jax.nn.log_softmax(draft_logits, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def total_variation(target_logits: jax.Array, draft_logits: jax.Array) -> jax.Array:
    """TV(p, q) = 1/2 sum |p - q| per position, [B,T]: one minus the greedy-free acceptance rate of SD."""
    p, q = jax.nn.softmax(target_logits, axis=-1), jax.nn.softmax(draft_logits, axis=-1)
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


LOSSES = {"kl": forward_kl, "tv": total_variation}


def logits_of(params: Params, config: models.Config, tokens: jax.Array, dtype,
              segments: jax.Array | None = None) -> jax.Array:
    """Teacher-forced float32 logits [B,T,V] of packed rows, computed in `dtype` (fresh cache); with segments
    [B,T], each document attends only to itself."""
    p = jax.tree.map(lambda a: a.astype(dtype), params)
    cache = models.init_cache(config, tokens.shape[0], tokens.shape[1], dtype)
    return models.forward(p, config, tokens, cache, segments=segments)[0]


def distill_loss(draft_params: Params, draft_config: models.Config, target_logits: jax.Array, tokens: jax.Array,
                 mask: jax.Array, h: Hyper, segments: jax.Array | None = None) -> jax.Array:
    """Mean divergence over the positions where mask is 1; gradients flow into draft_params only."""
    draft_logits = logits_of(draft_params, draft_config, tokens, models.parse_dtype(h.compute_dtype), segments)
    per_pos = LOSSES[h.loss](jax.lax.stop_gradient(target_logits), draft_logits)
    return jnp.sum(per_pos * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------- optimisation

def optimizer(h: Hyper) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on a warmup + cosine schedule; no weight decay on norm vectors."""
    warmup = min(h.warmup, h.steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, h.lr, warmup, max(h.steps, 1), h.lr * h.end_lr_ratio)
    decay_mask = lambda params: jax.tree.map(lambda a: a.ndim > 1, params)
    return optax.chain(optax.clip_by_global_norm(h.clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=h.weight_decay, mask=decay_mask))


def init_state(params: Params, h: Hyper) -> TrainState:
    master = jax.tree.map(lambda a: jnp.array(a, jnp.float32, copy=True), params)  # a copy: the step donates it
    return TrainState(step=jnp.zeros((), jnp.int32), params=master, opt_state=optimizer(h).init(master))


def make_train_step(h: Hyper, draft_config: models.Config, target_config: models.Config) -> Callable:
    """jitted (state, target_params, tokens, mask, segments; all [B,T]) -> (state, loss); the state is donated."""
    tx, dtype = optimizer(h), models.parse_dtype(h.compute_dtype)

    def step(state: TrainState, target_params: Params, tokens: jax.Array, mask: jax.Array, segments: jax.Array):
        target_logits = jax.lax.stop_gradient(logits_of(target_params, target_config, tokens, dtype, segments))
        loss, grads = jax.value_and_grad(distill_loss)(state.params, draft_config, target_logits, tokens, mask, h,
                                                       segments)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), loss

    return jax.jit(step, donate_argnums=0)


def make_agreement(draft_config: models.Config, target_config: models.Config, dtype) -> Callable:
    """jitted (draft_params, target_params, tokens, mask, segments) -> (matches, positions): teacher-forced greedy
    agreement."""

    def agree(draft_params, target_params, tokens, mask, segments):
        same = (jnp.argmax(logits_of(draft_params, draft_config, tokens, dtype, segments), -1)
                == jnp.argmax(logits_of(target_params, target_config, tokens, dtype, segments), -1))
        return jnp.sum(same * mask), jnp.sum(mask)

    return jax.jit(agree)
