"""The distillation loop: train to the last step, resuming from the newest checkpoint, one jitted step per batch,
the loss logged as it goes."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from adasd_jax import models
from adasd_jax.distill.checkpoint import Checkpoints, _read_log, _write_atomic
from adasd_jax.distill.data import batch_indices
from adasd_jax.distill.losses import Hyper, Params, TrainState, init_state, make_train_step


@dataclasses.dataclass
class Run:
    """Everything a training run needs, prepared once: models, data, the jitted step, where state lives."""

    h: Hyper
    draft_config: models.Config
    init_params: Params
    target_config: models.Config
    target_params: Params
    tokens: np.ndarray  # [N, seq_len] int32
    mask: np.ndarray  # [N, seq_len] float32
    segments: np.ndarray  # [N, seq_len] int32 document ids
    train_dir: Path
    ckpt_every: int = 100


def train(run: Run, progress: bool = True, on_step: Callable[[int, float], None] | None = None) -> TrainState:
    """Train to run.h.steps, resuming from the newest checkpoint in run.train_dir; returns the final state.

    on_step(step, loss) is called after each step (a KeyboardInterrupt raised there stops the run
    like Ctrl-C: the newest checkpoint survives and the next call resumes from it).
    """
    from tqdm import tqdm

    h = run.h
    ckpts = Checkpoints(run.train_dir / "checkpoints", run.ckpt_every)
    log_path = run.train_dir / "log.jsonl"
    try:
        state = init_state(run.init_params, h)
        if ckpts.latest() is not None:
            state = ckpts.restore(state)
        start = int(state.step)
        log = _read_log(log_path, start)
        _write_atomic(log_path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in log)))
        step_fn = make_train_step(h, run.draft_config, run.target_config)
        bar = tqdm(total=h.steps, initial=start, desc="distill", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        with log_path.open("a") as f, bar:
            t0, seen, tps = time.perf_counter(), 0, float("nan")
            for step in range(start, h.steps):
                rows = batch_indices(step, len(run.tokens), h.batch_size, h.seed)
                mask = run.mask[rows]
                state, loss = step_fn(state, run.target_params, jnp.asarray(run.tokens[rows]), jnp.asarray(mask),
                                      jnp.asarray(run.segments[rows]))
                loss = float(loss)  # one host sync per step: the bar and the log need it
                if step == start:  # the first step compiles: measure speed from its end
                    t0 = time.perf_counter()
                else:
                    seen += int(mask.sum())
                    tps = seen / (time.perf_counter() - t0)
                f.write(json.dumps({"step": step + 1, "loss": loss, "tokens_per_s": None if step == start else tps}) + "\n")
                f.flush()
                ckpts.save(step + 1, state, force=step + 1 == h.steps)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:.0f}")
                bar.update(1)
                if on_step is not None:
                    on_step(step + 1, loss)
        return state
    finally:
        ckpts.close()
