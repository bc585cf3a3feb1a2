"""Teacher-forced statistics of a pair along the continuations of a bench run, in the format the cost model replays.

    python -m adasd_jax.bench.teacher_forced RUN_DIR/results.json OUT.npz [--method sd:K=4]

Each problem's prompt and the continuation a method emitted (a lossless method's greedy output is the target's own
path) go through both models in one forward each. Per generated position i of problem j the .npz holds
`match{j}` (the draft's argmax is the target's: the greedy verdict), `d{j}` (the JS distance, base 2), `e{j}` (the
draft's entropy, nats), `t{j}` (the draft's top-1 probability) and `a{j}` (sum of min(p, q): the acceptance
probability of speculative sampling at temperature 1), which `python -m adasd_jax.bench.cost_model` replays.
The pair and the problems are the run's own (its configuration records them); the file is written atomically.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import protocol
from adasd_jax.divergence import entropy, js_distance

KEYS = ("match", "d", "e", "t", "a")


def logits_along(model, tokens: np.ndarray) -> jax.Array:
    """float32 logits [T, V] of one row of tokens through a model of the decoder protocol (fresh cache)."""
    return _forward(model.decoder, model.params, jnp.asarray(tokens, jnp.int32)[None])[0]


@functools.partial(jax.jit, static_argnums=0)
def _forward(dec, params, tokens):
    cache = dec.init_cache(1, tokens.shape[1], protocol.activation_dtype(dec, params))
    return dec.forward(params, tokens, cache, jnp.full((1,), tokens.shape[1], jnp.int32))[0]


@jax.jit
def position_statistics(target_logits: jax.Array, draft_logits: jax.Array) -> dict[str, jax.Array]:
    """The statistics per position of target and draft logits [T, V] over the shared vocabulary."""
    p, q = jax.nn.softmax(target_logits, -1), jax.nn.softmax(draft_logits, -1)
    return {"match": jnp.argmax(target_logits, -1) == jnp.argmax(draft_logits, -1), "d": js_distance(p, q),
            "e": entropy(draft_logits), "t": q.max(-1), "a": jnp.minimum(p, q).sum(-1)}


def statistics(pair, prompt: list[int], continuation: list[int]) -> dict[str, np.ndarray]:
    """Per position of `continuation` (its token i predicted from prompt + continuation[:i]): the arrays of KEYS."""
    if not prompt or not continuation:
        raise ValueError("teacher forcing needs a non-empty prompt and continuation")
    tokens = np.asarray(list(prompt) + list(continuation)[:-1], np.int32)
    bucket = -(-len(tokens) // 64) * 64  # one compile per 64-token bucket
    padded = np.zeros(bucket, np.int32)
    padded[:len(tokens)] = tokens
    v = pair.vocab
    stats = position_statistics(logits_along(pair.target, padded)[:, :v], logits_along(pair.draft, padded)[:, :v])
    return {k: np.asarray(x)[len(prompt) - 1:len(tokens)] for k, x in stats.items()}


def pair_of_run(config: dict):
    """The pair a bench run used, loaded from the sources its configuration records."""
    from adasd_jax import loading

    m = config["models"]
    if not m.get("draft"):
        raise ValueError("the run has no draft model: teacher-forced statistics compare a draft with its target")
    q = lambda x: None if x in (None, "none") else x
    return loading.load_pair(draft=m["draft"]["source"], target=m["target"]["source"], dtype=config["dtype"],
                             draft_layers=m["draft"].get("layers"), quantize=q(config.get("quantize")),
                             draft_quantize=q(config.get("draft_quantize")))


def from_run(results: dict, method: str, pair, data_file: str | None = None) -> list[dict[str, np.ndarray]]:
    """The statistics of every record of `method` in a bench run's results, in the run's problem order."""
    from adasd_jax import engine
    from adasd_jax.bench import datasets

    c = results["config"]
    if method not in results["records"]:
        raise ValueError(f"the run has no records of {method!r}; it ran {', '.join(results['records'])}")
    problems = {p.id: p for p in datasets.load(c["dataset"], data_file or c.get("data_file"), c["limit"],
                                                 c["offset"])}
    out = []
    for r in results["records"][method]:
        p = problems[r["problem"].split("#")[0]]  # a repeat's id ends in '#s<r>' (datasets.repeat)
        out.append(statistics(pair, engine.encode(pair, [p.prompt], p.chat)[0], r["tokens"]))
    return out


def save(path: str | Path, seqs: list[dict[str, np.ndarray]]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **{f"{k}{j}": s[k] for j, s in enumerate(seqs) for k in KEYS})
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a bench run's results.json")
    ap.add_argument("out", help="the .npz to write")
    ap.add_argument("--method", default="sd:K=4", help="whose continuations to follow: a lossless method's greedy "
                    "output is the target's own path (default sd:K=4)")
    ap.add_argument("--data-file", help="the problems' file, where the run's relative path does not resolve here")
    a = ap.parse_args(argv)
    results = json.loads(Path(a.results).read_text())
    seqs = from_run(results, a.method, pair_of_run(results["config"]), a.data_file)
    save(a.out, seqs)
    n = sum(len(s["match"]) for s in seqs)
    print(f"{len(seqs)} problems, {n} positions; greedy agreement {sum(s['match'].sum() for s in seqs) / n:.3f}; "
          f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
