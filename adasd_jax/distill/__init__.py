"""Distil a draft for a target: optax training on the target's next-token distributions (DistillSpec).

    adasd distill --target T.gguf --init layers:8 --data train.jsonl --out draft_dir --eval

The draft starts from another model or from the target's first N layers (`layers:N`, a
self-speculative start) and learns to match the frozen target: loss = forward KL(target || draft)
(default) or total variation, on every position of fixed-length packed sequences. AdamW with
warmup and cosine decay, gradient clipping, bfloat16 compute over float32 master weights; one
jitted step, one compilation (static shapes).

Training state lives beside the output in `DIR.train/`: the tokenized data (`data.npz`), the
settings (`train.json`), Orbax checkpoints every N steps and the loss log. Re-running the same
command resumes from the last checkpoint; the data order is a function of (seed, epoch), so the
resumed run reproduces the uninterrupted one bit for bit. The final draft is a normal model
directory (`models.save`, with the target's tokenizer) that `generate`, `bench` and `load_pair` take.

The parts, by concern: `losses` (hyperparameters, the divergences, the jitted train step), `data` (rows,
tokenizing, packing, the batch order), `checkpoint` (what lives in DIR.train/), `training` (the resumable loop),
`evaluation` (agreement and engine figures before and after), `cli` (`adasd distill`'s arguments and main).
"""
from adasd_jax.distill.checkpoint import Checkpoints, cached_data, prepare_train_dir, settings_key
from adasd_jax.distill.cli import add_arguments, check_init, check_output, init_draft, main
from adasd_jax.distill.data import (answer_of, batch_indices, continuations, encode_prompt, encode_row, pack,
                                    prompt_of, read_rows)
from adasd_jax.distill.evaluation import eval_table, evaluate, teacher_forced_agreement
from adasd_jax.distill.losses import (LOSSES, Hyper, Params, TrainState, distill_loss, forward_kl, init_state,
                                      logits_of, make_agreement, make_train_step, optimizer, total_variation)
from adasd_jax.distill.training import Run, train

__all__ = ["LOSSES", "Checkpoints", "Hyper", "Params", "Run", "TrainState", "add_arguments", "answer_of",
           "batch_indices", "cached_data", "check_init", "check_output", "continuations", "distill_loss",
           "encode_prompt", "encode_row", "eval_table", "evaluate", "forward_kl", "init_draft", "init_state",
           "logits_of", "main", "make_agreement", "make_train_step", "optimizer", "pack", "prepare_train_dir",
           "prompt_of", "read_rows", "settings_key", "teacher_forced_agreement", "total_variation", "train"]
