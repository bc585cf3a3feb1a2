"""The benchmark's run loop: every method on every problem, the method order rotated per batch of problems so
machine drift hits all alike; each call's records, scored as they come, and the bare target step timed between."""
from __future__ import annotations

import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import engine, models
from adasd_jax.bench import datasets, execution, peers


def score(prob: datasets.Problem, text: str | None, timeout: float, cache: dict,
          humaneval_extract: str = "spec", unsafe_exec: bool = False) -> tuple[bool | None, dict]:
    """(correct, details): GSM8K exact match, HumanEval pass@1 by execution, MT-bench unscored."""
    if text is None or prob.dataset == "mtbench":
        return None, {}
    if prob.dataset == "gsm8k":
        return datasets.gsm8k_correct(text, prob.answer), {"extracted": datasets.extract_answer(text)}
    completion = datasets.humaneval_completion(prob.prompt, text, prob.entry_point, humaneval_extract)
    key = (prob.id, completion)
    if key not in cache:
        cache[key] = execution.passes(prob.prompt, completion, prob.answer, prob.entry_point, timeout, unsafe_exec)
    passed, result = cache[key]
    return passed, {"completion": completion, "result": result}


def target_step_timer(pair: engine.Pair, position: int = 256):
    """A function that times one jitted one-token target decode step (B=1), the `ar` speed limit, in seconds.

    Compiled here, once; the runner calls it between problems so the step is timed under the same machine
    conditions as the methods, and reports the median.
    """
    c, p = pair.target.config, pair.target.params
    cache = models.init_cache(c, 1, position + 128, models.activation_dtype(p)).with_lengths(jnp.asarray([position]))
    step = jax.jit(models.forward, static_argnums=1)
    tok = jnp.asarray([[1]], jnp.int32)
    jax.block_until_ready(step(p, c, tok, cache))

    def once() -> float:
        t = time.perf_counter()
        jax.block_until_ready(step(p, c, tok, cache))
        return time.perf_counter() - t

    return once


def _row_trace(trace, b: int, rounds: int) -> dict:
    """One row's per-round record (live rounds only): proposals, accepted proposals, thresholds in force."""
    pick = lambda x: np.asarray(x)[:rounds, b]
    tg = pick(trace.t_g).astype(float)
    return {"draft_len": pick(trace.draft_len).tolist(), "accepted": pick(trace.accepted).tolist(),
            "t_g": [None if not math.isfinite(v) else v for v in tg.tolist()],
            "t_v": pick(trace.t_v).astype(float).tolist()}


def _jax_records(pair, chunk, spec, max_new_tokens, temperature, seed, use_trace) -> list[dict]:
    """One timed call. The trace keeps rounds only: its per-position divergences would add work to the methods that
    do not compute them. A program's first run is 15-25% slower on XLA:CPU (measured on GSM8K at 256 tokens), so a
    freshly compiled one runs once untimed first, on the method's carried state, which is then put back."""
    prompts = [p.prompt for p in chunk]
    call = dict(method=spec, max_new_tokens=max_new_tokens, temperature=temperature, chat=chunk[0].chat, seed=seed,
                trace="rounds" if use_trace else False)
    compile_s = engine.precompile(pair, prompts, **{k: v for k, v in call.items() if k != "seed"})
    if compile_s > 0:
        states = dict(pair.states)
        compile_s += engine.generate(pair, prompts, **call).compile_s  # a stop="cost" table is measured here
        pair.states.clear()
        pair.states.update(states)
    out = engine.generate(pair, prompts, **call)
    B = len(chunk)
    costs = {k: v for k, v in out.summary().items() if k.startswith("cost_") or k == "rate"}  # stop=cost only
    recs = []
    for b, prob in enumerate(chunk):
        m = {**{k: v[b].item() for k, v in out.metrics.items()}, **costs}
        rec = {"problem": prob.id, "row": b, "batch": B, "tokens": out.tokens[b],
               "text": out.texts[b] if out.texts else None,
               "run_s": out.run_s / B, "compile_s": (compile_s + out.compile_s) / B, **m}  # a batch call's in shares
        rec["t_g"] = None if not math.isfinite(rec["t_g"]) else rec["t_g"]
        if out.trace is not None:
            rec["trace"] = _row_trace(out.trace, b, m["rounds"])
        recs.append(rec)
    return recs


def _peer_record(pair, hf, prob, spec, max_new_tokens, temperature, seed, warm: set) -> dict:
    ids = engine.encode(pair, [prob.prompt], prob.chat)[0]
    compile_s = 0.0
    if spec not in warm:  # first call: torch's one-off setup, reported apart like JAX compilation
        _, compile_s = peers.generate(hf, spec, ids, min(4, max_new_tokens), pair.eos_ids, temperature, seed=seed)
        warm.add(spec)
    tokens, secs = peers.generate(hf, spec, ids, max_new_tokens, pair.eos_ids, temperature, seed=seed)
    text = pair.tokenizer.decode(tokens, skip_special_tokens=True) if pair.tokenizer is not None else None
    return {"problem": prob.id, "row": 0, "batch": 1, "tokens": tokens, "text": text, "run_s": secs,
            "compile_s": compile_s, "new_tokens": len(tokens)}


def run(pair: engine.Pair, problems: list[datasets.Problem], methods: list[str], max_new_tokens: int,
        temperature: float = 0.0, seed: int = 0, batch_size: int = 1, hf: peers.HFPair | None = None,
        trace: bool = True, progress: bool = True, exec_timeout: float = execution.TIMEOUT_S,
        peer_limit: int = 0, step_samples: list[float] | None = None, humaneval_extract: str = "spec",
        done: dict | None = None, start: int = 0, checkpoint=None, unsafe_exec: bool = False) -> dict:
    """Every method on every problem; the method order rotates per batch of problems. Returns per-method records.

    peer_limit > 0 runs the torch peers on the first `peer_limit` problems only (they are 5-10x slower);
    their ratios are then taken over the problems they share with each method. A `step_samples` list
    receives 3 timings of one bare target decode step per batch of problems, interleaved with the methods;
    `ar`'s records then also carry `prefill_s`, its prefill timed apart.
    `checkpoint(records, chunks_done)` is called after every batch of problems; a resumed run passes the records of
    its first `start` batches as `done` and runs the rest with the same seeds and method order.
    """
    from tqdm import tqdm

    if any(m in peers.PEERS for m in methods) and hf is None:
        raise ValueError("hf-ar/hf-assisted need the torch models: pass hf=peers.load_peers(...)")
    records = {m: list((done or {}).get(m, [])) for m in methods}
    chunks = [problems[i:i + batch_size] for i in range(0, len(problems), batch_size)]
    n_peer = sum(m in peers.PEERS for m in methods)
    skipped = n_peer * sum(1 for c in range(start, len(chunks)) if peer_limit and c * batch_size >= peer_limit)
    bar = tqdm(total=(len(chunks) - start) * len(methods) - skipped, disable=not progress, unit="call",
               file=sys.stderr)
    warm, exec_cache = set(), {}
    step_once = target_step_timer(pair) if step_samples is not None else None
    for c, chunk in enumerate(chunks):
        if c < start:
            continue
        if step_once is not None:
            step_samples += [step_once() for _ in range(3)]
        order = methods[c % len(methods):] + methods[:c % len(methods)]
        for spec in order:
            if spec in peers.PEERS:
                first = c * batch_size
                recs = [_peer_record(pair, hf, p, spec, max_new_tokens, temperature, seed + first + j, warm)
                        for j, p in enumerate(chunk) if not peer_limit or first + j < peer_limit]
                if not recs:
                    continue
            else:
                recs = _jax_records(pair, chunk, spec, max_new_tokens, temperature, seed + c, trace)
                if spec == "ar" and step_once is not None and pair.layout is None:  # prefill apart: decode-only figure
                    pre = engine.prefill_s(pair, [p.prompt for p in chunk], spec, max_new_tokens, temperature,
                                           chunk[0].chat) / len(chunk)
                    for rec in recs:
                        rec["prefill_s"] = pre
            for prob, rec in zip(chunk, recs):
                rec["correct"], rec["score"] = score(prob, rec["text"], exec_timeout, exec_cache, humaneval_extract,
                                                     unsafe_exec)
            records[spec] += recs
            bar.update(1)
            rates = {m: sum(r["new_tokens"] for r in rs) / max(sum(r["run_s"] for r in rs), 1e-9)
                     for m, rs in records.items() if rs}
            bar.set_postfix_str(" ".join(f"{m} {v:.1f}" for m, v in rates.items()) + " tok/s", refresh=False)
        if checkpoint is not None:
            checkpoint(records, c + 1)
    bar.close()
    return records
