"""`adasd distill`: its arguments, the checks made before anything loads or is written, where the draft starts
(`--init`), and main, which ties data, training, saving and evaluation together."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

from adasd_jax import models, validate
from adasd_jax.distill.checkpoint import _read_log, _write_atomic, cached_data, prepare_train_dir
from adasd_jax.distill.data import continuations, encode_row, pack, prompt_of, read_rows
from adasd_jax.distill.evaluation import eval_table, evaluate
from adasd_jax.distill.losses import LOSSES, Hyper, Params
from adasd_jax.distill.training import Run, train
from adasd_jax.models.load import orbax_io


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
    from adasd_jax.loading import _same_tokenizer

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
