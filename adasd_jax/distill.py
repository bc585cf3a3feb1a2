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
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from adasd_jax.models.load import orbax_io

from adasd_jax import models
from adasd_jax import validate
from adasd_jax.bench.datasets import GSM8K_INSTRUCTION, jsonl_rows

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


# ---------------------------------------------------------------- data



def read_rows(path: str | Path, offset: int = 0, limit: int | None = None) -> list[dict]:
    """Rows [offset, offset+limit) of a jsonl file: GSM8K-style (`question`, `answer`) or any `text` field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {path} is not UTF-8 text ({e}); convert it to UTF-8 jsonl") from e
    rows = []
    for i, row in jsonl_rows(text, str(path)):
        if not isinstance(row, dict) or not (isinstance(row.get("text"), str)
                                             or isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}:{i} has no string `text` field and no `question`+`answer` fields (found "
                             f"{fields}); give each line a `text`, or GSM8K's `question` and `answer`")
        rows.append(row)
    if not rows:
        raise ValueError(f"data file {path} is empty: it holds no JSON rows")
    picked = rows[offset:offset + limit if limit else None]
    if not picked:
        raise ValueError(f"data file {path} has {len(rows)} rows: none left at offset {offset}")
    return picked


def prompt_of(row: dict) -> str:
    return row["question"] + GSM8K_INSTRUCTION if "question" in row else row["text"]


def answer_of(row: dict) -> str:
    """GSM8K's reference answer without calculator marks, ending the way the eval prompt asks."""
    a = re.sub(r"<<[^>]*>>", "", row["answer"])
    return re.sub(r"\n?####\s*(.+)$", r"\nThe answer is \1.", a.strip())


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    if chat and tokenizer.chat_template:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    return tokenizer(text)["input_ids"]


def encode_row(tokenizer, row: dict, chat: bool) -> list[int]:
    """One training document: `text` as is, or a GSM8K question with its answer (chat template or plain)."""
    if "question" not in row:
        ids = tokenizer(row["text"])["input_ids"]
    elif chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt_of(row)},
                                              {"role": "assistant", "content": answer_of(row)}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(f"Question: {prompt_of(row)}\nAnswer: {answer_of(row)}")["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])


def pack(docs: list[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate documents and cut into [N, seq_len] rows: (tokens, loss mask, document ids).

    The tail row is padded and masked out; the document ids keep attention inside each document.
    """
    stream = np.asarray([t for d in docs for t in d], np.int32)
    if stream.size == 0:
        raise ValueError("the data tokenized to no tokens")
    n = -(-stream.size // seq_len)
    tokens = np.zeros(n * seq_len, np.int32)
    tokens[:stream.size] = stream
    mask = (np.arange(n * seq_len) < stream.size).astype(np.float32)
    segments = np.full(n * seq_len, -1, np.int32)  # padding: a document of its own
    segments[:stream.size] = np.repeat(np.arange(len(docs), dtype=np.int32), [len(d) for d in docs])
    return tokens.reshape(n, seq_len), mask.reshape(n, seq_len), segments.reshape(n, seq_len)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of batch `step`: epochs are permutations seeded by (seed, epoch); a pure function of step."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch_size:  # fewer rows than a batch: repeat them
        order = np.resize(order, batch_size)
    return order[i * batch_size:(i + 1) * batch_size]


def continuations(target: models.Config, target_params, tokenizer, prompts: list[str], chat: bool,
                  max_new_tokens: int, batch_size: int = 16, progress: bool = True) -> list[list[int]]:
    """Prompt ids + the target's own greedy continuation, one document per prompt (method `ar`)."""
    from tqdm import tqdm

    from adasd_jax import engine

    pair = engine.Pair(target=engine.Model(target, target_params, "target"), draft=None, tokenizer=tokenizer,
                       vocab=target.vocab_size)
    docs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="target continuations", disable=not progress,
                      file=sys.stderr):
        chunk = prompts[start:start + batch_size]
        out = engine.generate(pair, chunk, method="ar", max_new_tokens=max_new_tokens, chat=chat)
        docs += [encode_prompt(tokenizer, p, chat) + t for p, t in zip(chunk, out.tokens)]
    return docs


# ---------------------------------------------------------------- models

def check_init(spec: str, layers: int | None) -> None:
    """Refuse a malformed `--init layers:N`, or one with `--init-layers` (before any model loads)."""
    if spec.startswith("layers:"):
        n = spec.split(":", 1)[1]
        if not n.strip().isdigit() or int(n) < 1:
            raise ValueError(f"--init {spec!r}: write layers:N with an integer N >= 1, e.g. layers:8")
        if layers is not None:
            raise ValueError(f"--init-layers cuts another model; --init {spec} already picks the target's layers: "
                             "drop one of the two")


def check_output(a, out: Path, train_dir: Path) -> None:
    """Refuse an --out or OUT.train/ that holds what this command did not make (before anything is written)."""
    ours = (train_dir / "train.json").is_file()
    own_draft = ours and orbax_io.is_orbax_dir(out) and str(orbax_io.load_config(out)[1].get("source")).startswith(
        "adasd distill")
    sources = [a.target, a.data, a.eval_data] + ([] if a.init.startswith("layers:") else [a.init])
    validate.output(out, "--out", a.overwrite or own_draft, sources=sources)
    if train_dir.exists() and not ours and (not train_dir.is_dir() or any(train_dir.iterdir())):
        raise ValueError(f"{train_dir} exists and was not made by adasd distill (it has no train.json): move it "
                         "away, or pick another --out")


def init_draft(spec: str, target_config: models.Config, target_params: Params, tokenizer, dtype: str,
               layers: int | None = None):
    """INIT: `layers:N` (the target's embedding, first N layers, final norm and head) or another model source,
    of which `layers` keeps the first ones (a cheaper draft to train back up)."""
    check_init(spec, layers)
    if spec.startswith("layers:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--init {spec!r}: write layers:N with an integer N, e.g. layers:8") from None
        return models.first_layers(target_config, target_params, n)
    from adasd_jax.engine import _same_tokenizer

    c, p, tok = models.load(spec, dtype)
    if tokenizer is not None and tok is not None and not _same_tokenizer(tokenizer, tok):
        raise ValueError(f"--init {spec} has a different tokenizer from the target: a draft must share the "
                         "target's vocabulary (use layers:N or a model of the same family)")
    if c.vocab_size != target_config.vocab_size:
        raise ValueError(f"--init {spec} has vocabulary {c.vocab_size}, the target {target_config.vocab_size}: "
                         "distillation compares distributions over one vocabulary")
    if layers is not None:
        c, p = models.first_layers(c, p, layers, label="--init-layers")
    return c, p


# ---------------------------------------------------------------- checkpoints

class Checkpoints:
    """Orbax CheckpointManager over TrainState: atomic step directories, the newest few kept."""

    def __init__(self, directory: Path, every: int, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        opts = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                            enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=opts)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: TrainState) -> TrainState:
        step = self.latest()
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
        return self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def save(self, step: int, state: TrainState, force: bool = False) -> bool:
        return self.manager.save(step, args=self._ocp.args.StandardSave(state), force=force)

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto]


# ---------------------------------------------------------------- the run

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


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare_train_dir(train_dir: Path, settings: dict, restart: bool) -> None:
    """Create DIR.train, or check that it was made by the same command (else resuming would mix two runs)."""
    meta = train_dir / "train.json"
    started = (train_dir / "log.jsonl").is_file() or (train_dir / "checkpoints").is_dir()
    if meta.is_file() and (restart or not started):  # ours; with nothing trained, settings may change freely
        shutil.rmtree(train_dir)
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{train_dir} holds a run with other settings (differing: {', '.join(diff)}); "
                             "re-run the same command to resume, or pass --restart to start over")
        return
    train_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(meta, lambda p: p.write_text(json.dumps(settings, indent=1)))


def cached_data(train_dir: Path, make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The packed (tokens, mask, segments) of this run, made once and kept so a resumed run sees the same rows.

    A cache from before document ids were kept is made again (the rows come out the same)."""
    path = train_dir / "data.npz"
    if path.is_file():
        with np.load(path) as z:
            if "segments" in z:
                return z["tokens"], z["mask"], z["segments"]
    tokens, mask, segments = make()

    def write(p: Path):
        with p.open("wb") as f:
            np.savez(f, tokens=tokens, mask=mask, segments=segments)

    _write_atomic(path, write)
    return tokens, mask, segments


# ---------------------------------------------------------------- evaluation

def teacher_forced_agreement(draft_config, draft_params, target_config, target_params, tokens, mask, segments,
                             dtype, batch_size: int = 4) -> float:
    agree = make_agreement(draft_config, target_config, dtype)
    same = total = 0.0
    for s in range(0, len(tokens), batch_size):
        rows = np.resize(np.arange(s, min(s + batch_size, len(tokens))), batch_size)  # static batch shape
        m = mask[rows] * (np.arange(batch_size) < len(tokens) - s)[:, None]
        a, n = agree(draft_params, target_params, jnp.asarray(tokens[rows]), jnp.asarray(m),
                     jnp.asarray(segments[rows]))
        same, total = same + float(a), total + float(n)
    return same / max(total, 1.0)


def evaluate(pair, problems, methods: list[str], max_new_tokens: int, eval_data: tuple, dtype,
             progress: bool = True) -> dict:
    """Greedy agreement (teacher-forced on held-out text) and engine figures for each method."""
    from adasd_jax.bench import report, run_loop

    pair.states.clear()
    agreement = teacher_forced_agreement(pair.draft.config, pair.draft.params, pair.target.config, pair.target.params,
                                         *eval_data, dtype)
    records = run_loop.run(pair, problems, methods, max_new_tokens, trace=False, progress=progress)
    summary = report.summarize(records, methods)
    rows = {}
    for m, r in summary["methods"].items():
        rounds = sum(x["rounds"] for x in records[m])
        rows[m] = {k: r.get(k) for k in ("tokens_per_s", "speedup_vs_ar", "tokens_per_call", "agreement_with_ar",
                                         "accuracy")}
        rows[m]["accepted_per_round"] = sum(x["accepted"] for x in records[m]) / max(rounds, 1)
    return {"greedy_agreement": agreement, "methods": rows}


def eval_table(before: dict | None, after: dict) -> str:
    lines = ["| | greedy agreement | " + " | ".join(f"{m} tok/s" for m in after["methods"]) + " | "
             + " | ".join(f"{m} x ar" for m in after["methods"] if m != "ar") + " | "
             + " | ".join(f"{m} tokens/target call" for m in after["methods"] if m != "ar") + " |"]
    lines.append("|---" * (1 + 1 + len(after["methods"]) + 2 * (len(after["methods"]) - 1)) + "|")
    for name, e in (("before", before), ("after", after)):
        if e is None:
            continue
        ms = e["methods"]
        cells = [f"{e['greedy_agreement']:.3f}"] + [f"{ms[m]['tokens_per_s']:.2f}" for m in ms]
        cells += [f"{ms[m]['speedup_vs_ar']:.3f}" for m in ms if m != "ar"]
        cells += [f"{ms[m]['tokens_per_call']:.2f}" for m in ms if m != "ar"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

def add_arguments(p) -> None:
    p.add_argument("--target", required=True, help="the target model (any source `adasd generate` takes)")
    p.add_argument("--init", required=True, help="layers:N (the target's first N layers) or another model source")
    p.add_argument("--init-layers", type=int, default=None, metavar="N",
                   help="keep only the first N layers of the --init model (with its final norm and head)")
    p.add_argument("--data", required=True, help="jsonl: GSM8K rows (question, answer) or rows with a `text` field")
    p.add_argument("--out", required=True, help="the distilled draft's directory (state lives in OUT.train/)")
    p.add_argument("--offset", type=int, default=0, help="first data row to use")
    p.add_argument("--limit", type=int, default=None, help="rows to use (default: all from --offset)")
    p.add_argument("--template", choices=("chat", "plain"), default="chat", help="how GSM8K rows become text")
    p.add_argument("--continuations", type=int, default=0, metavar="TOKENS",
                   help="train on the target's greedy continuations (this many tokens) of the rows' prompts "
                        "instead of the rows' answers")
    p.add_argument("--dtype", default="bfloat16", help="dtype the target is held and evaluated in")
    p.add_argument("--compute-dtype", default="bfloat16", help="training compute dtype (masters stay float32)")
    p.add_argument("--save-dtype", default=None, help="dtype of the saved draft (default: --dtype)")
    for name, default in (("steps", Hyper.steps), ("batch-size", Hyper.batch_size), ("seq-len", Hyper.seq_len),
                          ("warmup", Hyper.warmup), ("seed", Hyper.seed)):
        p.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("lr", Hyper.lr), ("weight-decay", Hyper.weight_decay), ("clip", Hyper.clip)):
        p.add_argument(f"--{name}", type=float, default=default)
    p.add_argument("--loss", choices=tuple(LOSSES), default="kl", help="kl: forward KL (default) | tv: total variation")
    p.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--restart", action="store_true", help="discard OUT.train/ and start over")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT that this command did not write (a file, or a directory with files "
                        "in it), in one step once the new draft is complete; without it, such an OUT is refused")
    p.add_argument("--eval", action="store_true", help="report agreement and speculative figures before and after")
    p.add_argument("--eval-data", default=None, help="held-out jsonl (default: --data)")
    p.add_argument("--eval-offset", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=10)
    p.add_argument("--eval-max-new-tokens", type=int, default=128)
    p.add_argument("--eval-methods", default="ar,sd:K=4,adasd")
    p.add_argument("--no-progress", action="store_true")


def _check_disjoint(a) -> None:
    if a.eval_data is not None and Path(a.eval_data).resolve() != Path(a.data).resolve():
        return
    train_end = a.offset + a.limit if a.limit else float("inf")
    if a.eval_offset < train_end and a.offset < a.eval_offset + a.eval_limit:
        raise ValueError(f"eval rows [{a.eval_offset}, {a.eval_offset + a.eval_limit}) overlap the training rows "
                         f"[{a.offset}, {train_end}) of {a.data}: move --eval-offset/--offset or pass --eval-data")


def main(a) -> int:
    from adasd_jax import engine
    from adasd_jax.bench import datasets
    from adasd_jax.policies import Method

    if a.ckpt_every < 1:
        raise ValueError(f"--ckpt-every must be >= 1, got {a.ckpt_every}")
    check_init(a.init, a.init_layers)
    out = Path(a.out).expanduser().absolute()
    train_dir = out.with_name(out.name + ".train")
    check_output(a, out, train_dir)
    h = Hyper(steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, warmup=a.warmup,
              weight_decay=a.weight_decay, clip=a.clip, loss=a.loss, compute_dtype=a.compute_dtype, seed=a.seed)
    methods = a.eval_methods.split(",")
    if a.eval:
        _check_disjoint(a)
        for m in methods:
            Method.parse(m)
    rows = read_rows(a.data, a.offset, a.limit)  # fail on bad data before loading models
    eval_rows = read_rows(a.eval_data or a.data, a.eval_offset, a.eval_limit) if a.eval else None
    settings = {"target": str(a.target), "init": a.init, "data": str(Path(a.data).resolve()), "offset": a.offset,
                "limit": a.limit, "template": a.template, "continuations": a.continuations, "dtype": a.dtype,
                "ckpt_every": a.ckpt_every, **dataclasses.asdict(h)}
    if a.init_layers is not None:  # absent otherwise, so runs from before the option still resume
        settings["init_layers"] = a.init_layers
    prepare_train_dir(train_dir, settings, a.restart)
    progress = not a.no_progress

    tc, tp, tok = models.load(a.target, a.dtype)
    if tok is None:
        raise ValueError(f"target {a.target} has no tokenizer: distillation reads text and the draft must carry it")
    dc, dp = init_draft(a.init, tc, tp, tok, a.dtype, a.init_layers)
    init_name = a.init if a.init_layers is None else f"{a.init} (first {a.init_layers} layers)"
    chat = a.template == "chat"

    def make_data():
        if a.continuations:
            docs = continuations(tc, tp, tok, [prompt_of(r) for r in rows], chat, a.continuations, progress=progress)
        else:
            docs = [encode_row(tok, r, chat) for r in rows]
        return pack(docs, h.seq_len)

    tokens, mask, segments = cached_data(train_dir, make_data)
    print(f"data: {len(rows)} rows -> {len(tokens)} sequences of {h.seq_len} tokens ({int(mask.sum())} tokens); "
          f"{h.steps} steps of {h.batch_size} = {h.steps * h.batch_size / max(len(tokens), 1):.2f} epochs",
          file=sys.stderr)

    report = {"settings": settings}
    if a.eval:
        eval_data = pack([encode_row(tok, r, chat) for r in eval_rows], h.seq_len)
        problems = [datasets.Problem(id=f"eval/{a.eval_offset + i}", prompt=prompt_of(r), chat=chat,
                                     answer=r.get("answer", "")) for i, r in enumerate(eval_rows)]
        pair = engine.Pair(target=engine.Model(tc, tp, str(a.target)), draft=engine.Model(dc, dp, init_name),
                           tokenizer=tok, vocab=tc.vocab_size)
        evaluate_now = lambda: evaluate(pair, problems, methods, a.eval_max_new_tokens, eval_data,
                                        models.parse_dtype(a.dtype), progress)
        if (train_dir / "eval_before.json").is_file():
            report["before"] = json.loads((train_dir / "eval_before.json").read_text())
        else:
            report["before"] = evaluate_now()
            _write_atomic(train_dir / "eval_before.json", lambda p: p.write_text(json.dumps(report["before"], indent=1)))
        print("before: " + json.dumps(report["before"]), file=sys.stderr)

    run = Run(h=h, draft_config=dc, init_params=dp, target_config=tc, target_params=tp, tokens=tokens, mask=mask,
              segments=segments, train_dir=train_dir, ckpt_every=a.ckpt_every)
    t = time.perf_counter()
    state = train(run, progress=progress)
    report["train_s_this_call"] = time.perf_counter() - t
    save_dtype = models.parse_dtype(a.save_dtype or a.dtype)
    final = jax.tree.map(lambda x: x.astype(save_dtype), state.params)
    models.save(out, dc, final, tok, source=f"adasd distill --target {a.target} --init {init_name} ({h.steps} steps)",
                overwrite=True)  # checked by check_output before the run
    log = _read_log(train_dir / "log.jsonl", h.steps)
    report["loss_first"], report["loss_last"] = log[0]["loss"], log[-1]["loss"]
    print(f"wrote {out}: loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f} over {h.steps} steps", file=sys.stderr)
    if a.eval:
        pair.draft = engine.Model(dc, final, str(out))
        report["after"] = evaluate_now()
        print(eval_table(report["before"], report["after"]))
        _write_atomic(train_dir / "eval.json", lambda p: p.write_text(json.dumps(report, indent=1)))
    return 0
