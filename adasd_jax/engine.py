"""The convenience layer: tokenize, bucket, run the jitted loop on a loaded pair, detokenize.

    pair = adasd_jax.load_pair(draft="draft.gguf", target="target.gguf", dtype="bfloat16")
    out = adasd_jax.generate(pair, ["What is 2+3?"], method="adasd", max_new_tokens=128)
    out.texts, out.metrics, out.state
    adasd_jax.engine.precompile(pair, prompts, method="adasd")   # optional: compile now, run later

The AdaSD threshold state is an explicit input and output of `generate`; the pair keeps the last
returned state per method and passes it to the next call (unless `state=` or `reset_state=True`).

Loading the pair (`Model`, `Pair`, `load_pair`, `make_pair`, `shard`, `shared_vocab`) lives in adasd_jax.loading;
those names are importable from here as well.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import types
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import loop, policies, protocol, sharding, validate
from adasd_jax.divergence import Sampling
from adasd_jax.loading import Model, Pair, load_pair, make_pair, shard, shared_vocab  # noqa: F401 (engine's names too)
from adasd_jax.policies import Method
from adasd_jax.state import CostTable, ThresholdState, Trace

MIN_BUCKET = 16


class NaNLogitsError(FloatingPointError):
    """A model produced NaN logits; the affected rows stopped before emitting from them."""

    def __init__(self, message: str, output: "Output"):
        super().__init__(message)
        self.output = output


@dataclasses.dataclass
class Output:
    texts: list[str] | None
    tokens: list[list[int]]
    metrics: dict[str, np.ndarray]  # per row
    state: ThresholdState  # the threshold state after this call (pass it to the next one)
    trace: Trace | None
    compile_s: float
    run_s: float  # wall time of the generation itself, compilation excluded
    costs: CostTable | None = None  # the cost table a stop="cost" method ran with (target-step units)
    cost_source: str = ""  # "measured" (timed on the compiled programs), "bytes" (estimated) or "given"

    @property
    def tokens_per_s(self) -> float:
        return float(self.metrics["new_tokens"].sum() / self.run_s) if self.run_s > 0 else 0.0

    def summary(self) -> dict[str, float]:
        m = self.metrics
        calls = m["rounds"].sum() + len(m["rounds"])
        out = {"new_tokens": int(m["new_tokens"].sum()), "tokens_per_s": self.tokens_per_s,
               "compile_s": self.compile_s, "run_s": self.run_s, "target_calls": int(calls),
               "tokens_per_call": float(m["new_tokens"].sum() / max(calls, 1)),
               "drafted": int(m["drafted"].sum()), "accepted": int(m["accepted"].sum()),
               "draft_steps": int(m["draft_steps"].sum()),
               "lossy": int(m["lossy"].sum()), "t_g": float(np.mean(m["t_g"])), "t_v": float(np.mean(m["t_v"]))}
        if self.costs is not None:
            out.update(cost_draft=float(self.costs.draft), cost_verify=np.asarray(self.costs.verify).round(4).tolist(),
                       cost_source=self.cost_source, rate=float(np.mean(policies.rate(self.state, self.costs))))
        return out


# ---------------------------------------------------------------- prompts

def encode(pair: Pair, prompts: Sequence[str | Sequence[int]], chat: bool) -> list[list[int]]:
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if pair.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass prompts as lists of token ids")
            if chat and pair.tokenizer.chat_template:
                enc = pair.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                         add_generation_prompt=True, tokenize=True)
                p = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            elif p:
                p = pair.tokenizer(p)["input_ids"]
            else:
                p = []
        p = [int(t) for t in p]
        if not p:
            raise ValueError(f"prompt {i} is empty: give at least one token")
        bad = [t for t in p if not 0 <= t < pair.vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {pair.vocab}): {bad[:5]}")
        ids.append(p)
    return ids


def bucket(n: int) -> int:
    """Prompt length bucket: the next power of two (at least MIN_BUCKET), so new lengths rarely recompile."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


# ---------------------------------------------------------------- generation

def _input_shardings(layout: sharding.Layout, prompt_shape: tuple[int, int], mstate):
    """Where the loop's inputs go on the mesh: prompts and per-row state per the table, the key replicated."""
    return (layout.batch(prompt_shape, rest="seq"), layout.batch(prompt_shape[:1]), layout.method_state(mstate),
            layout.replicated)


def rank_tokens(pair: Pair, texts: Sequence[str]) -> Pair:
    """The pair with `token_ranks` counted over `texts` (ties: lower id first), which `draft_vocab=N` methods
    draw their N-token draft vocabulary from (frequency-ranked speculative sampling, FR-Spec, arXiv 2502.14856)."""
    if pair.tokenizer is None:
        raise ValueError("rank_tokens needs the pair's tokenizer (load the pair with a tokenizer)")
    counts = np.zeros(pair.vocab, np.int64)
    for ids in pair.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = np.asarray(ids, np.int64)
        np.add.at(counts, ids[ids < pair.vocab], 1)
    if not counts.any():
        raise ValueError("rank_tokens: the texts hold no tokens; pass a corpus like the prompts you will serve")
    return dataclasses.replace(pair, token_ranks=np.lexsort((np.arange(pair.vocab), -counts)))


def draft_vocab_ids(pair: Pair, n: int) -> jax.Array:
    """The sorted ids of a draft_vocab=n subset: the EOS tokens, then the most frequent tokens."""
    if pair.token_ranks is None:
        raise ValueError(f"draft_vocab={n} needs token frequency ranks: pair = adasd_jax.engine.rank_tokens(pair, "
                         "texts) with texts like your prompts and answers (adasd bench: --rank-corpus FILE)")
    if n > pair.vocab:
        raise ValueError(f"draft_vocab={n} is larger than the vocabulary ({pair.vocab} tokens)")
    eos = np.asarray([i for i in pair.eos_ids if i < pair.vocab], np.int64)
    ranked = pair.token_ranks[~np.isin(pair.token_ranks, eos)]
    return jnp.asarray(np.sort(np.concatenate([eos, ranked])[:n]), jnp.int32)


def _draft_params(pair: Pair, m: Method):
    """What the loop gets as the draft: its parameters, plus the subset's ids for a draft_vocab method."""
    if pair.draft is None or not m.uses_draft:
        return None
    if not m.draft_vocab:
        return pair.draft.params
    return {"params": pair.draft.params, "vocab_ids": draft_vocab_ids(pair, m.draft_vocab)}


def _cached(pair: Pair, key: tuple, build):
    """`pair.compiled[key]` (key: kind, batch, prompt width, ...), built on first use; returns (it, seconds built).

    Each use moves the key last, so the dict runs from least to most recently used. With `pair.max_buckets`, the
    executables of older (batch, width) buckets are dropped: XLA:CPU maps each compiled kernel's code apart (about
    3,000 mappings and 1-2 GB per method and bucket), so a long multi-bucket run can exhaust `vm.max_map_count`.
    Builders jit a fresh `functools.partial` of the loop's functions: JAX's tracing caches are keyed on the function
    object, so a module-level function would keep every executable alive after it leaves this dict.
    """
    fn, secs = pair.compiled.pop(key, None), 0.0
    if fn is None:
        t = time.perf_counter()
        fn = build()
        secs = time.perf_counter() - t
    pair.compiled[key] = fn
    if pair.max_buckets:
        recent = list(dict.fromkeys(k[1:3] for k in reversed(pair.compiled)))  # most recent first
        for k in [k for k in pair.compiled if k[1:3] in recent[pair.max_buckets:]]:
            del pair.compiled[k]
    return fn, secs


def _compiled(pair: Pair, lc: loop.LoopConfig, batch: int, width: int, max_len: int):
    def build():
        draft_params = _draft_params(pair, lc.method)
        mstate = loop.init_method_state(lc.method, batch)
        costs = CostTable.flat(len(lc.widths))
        shard = _input_shardings(lc.layout, (batch, width), mstate) if lc.layout else (None,) * 4
        struct = lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
        args = (pair.target.params, draft_params, struct(jnp.zeros((batch, width), jnp.int32), shard[0]),
                struct(jnp.zeros((batch,), jnp.int32), shard[1]),
                mstate if lc.layout is None else jax.tree.map(struct, mstate, shard[2]),
                jax.random.key(0) if lc.layout is None else struct(jax.random.key(0), shard[3]),
                costs if lc.layout is None else jax.tree.map(lambda x: struct(x, shard[3]), costs))
        fn = jax.jit(functools.partial(loop.generate), static_argnums=(2, 5))
        return fn.lower(args[0], args[1], lc, args[2], args[3], max_len, args[4], args[5], args[6]).compile()

    return _cached(pair, ("generate", batch, width, lc, max_len), build)


# ---------------------------------------------------------------- the cost table (stop="cost")

def _timings(calls: list, repeats: int) -> list[list[float]]:
    """`repeats` timings of each call, taken in turns after one warm-up call each (which compiles), so that drift of
    the machine's other load spreads over every call alike."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t = time.perf_counter()
            jax.block_until_ready(call())
            times[i].append(time.perf_counter() - t)
    return times


def _cost_calls(pair: Pair, lc: loop.LoopConfig, batch: int, max_len: int) -> list:
    """The loop's own programs the cost table times: one verification at each static width (the target forward and
    the acceptance over its positions, as `loop.verify` runs them), then one draft step."""
    B, K, V = batch, lc.k, lc.vocab
    pt, pd = pair.target.params, loop.with_draft_head(_draft_params(pair, lc.method), lc)
    cache = lambda decoder, params: protocol.with_lengths(decoder.init_cache(
        B, max_len, protocol.activation_dtype(decoder, params)), jnp.full((B,), max_len // 2, jnp.int32))

    @jax.jit
    def draft_step(pd, x, cache):
        q, cache = loop.draft_forward(pd, lc, x[:, None], cache, jnp.ones((B,), jnp.int32))
        return q, cache

    @jax.jit
    def verification(pt, cache, n, q_buf, keys):
        s = types.SimpleNamespace(done=jnp.zeros((B,), bool), last=jnp.zeros((B,), jnp.int32), target_cache=cache)
        return loop.verify(pt, lc, s, jnp.zeros((B, K), jnp.int32), n, jnp.zeros((B,), bool), q_buf,
                           jnp.zeros((B,), jnp.float32), keys)

    tcache, dcache = cache(lc.target, pt), cache(lc.draft, pair.draft.params)
    q_buf, keys = jnp.zeros((B, K + 1, V), jnp.float32), jax.random.split(jax.random.key(0), B)
    return [functools.partial(verification, pt, tcache, jnp.full((B,), w, jnp.int32), q_buf, keys)
            for w in lc.widths] + [functools.partial(draft_step, pd, jnp.zeros((B,), jnp.int32), dcache)]


def measure_costs(pair: Pair, lc: loop.LoopConfig, batch: int, max_len: int, repeats: int = 9) -> CostTable:
    """Time the loop's own programs on this device (`_cost_calls`), in units of the narrowest verification (one row:
    an autoregressive step): the median of `repeats` timings of each, taken in turns."""
    *verify_s, draft_s = np.median(_timings(_cost_calls(pair, lc, batch, max_len), repeats), axis=1)
    verify_s = np.maximum.accumulate(verify_s)  # a wider verification does the narrower one's work and more
    return CostTable(draft=jnp.float32(draft_s / verify_s[0]), verify=jnp.asarray(verify_s / verify_s[0], jnp.float32))


def bytes_costs(pair: Pair, lc: loop.LoopConfig) -> CostTable:
    """Without timings: a draft step costs the draft's parameter bytes over the target's, every width one step."""
    size = lambda params: sum(x.nbytes for x in jax.tree.leaves(params))
    return CostTable.flat(len(lc.widths), size(pair.draft.params) / size(pair.target.params))


def _cost_key(lc: loop.LoopConfig, batch: int) -> tuple:
    """What the timed programs depend on beyond the pair itself: the draft's head, the sampling (the acceptance's
    work), the batch and the width set."""
    return lc.method.draft_vocab, lc.sampling, batch, lc.widths


def cost_table(pair: Pair, lc: loop.LoopConfig, batch: int, max_len: int) -> tuple[CostTable, str]:
    """The pair's cost table for this device, dtype, batch and width set: measured at first use in each process and
    kept on the pair. Never kept on disk: a table measured while other work shared the machine would mislead every
    later process, and timing it again costs seconds beside compiling its programs. On a mesh: the bytes estimate."""
    key = _cost_key(lc, batch)
    if key not in pair.cost_tables:
        pair.cost_tables[key] = ((bytes_costs(pair, lc), "bytes") if pair.layout is not None else
                                 (measure_costs(pair, lc, batch, max_len), "measured"))
    return pair.cost_tables[key]


def generate_programs(pair: Pair):
    """(loop config, batch, cache length, compiled program) of each `generate` executable the pair holds."""
    return [(k[3], k[1], k[4], fn) for k, fn in pair.compiled.items() if k[0] == "generate"]


def _state_key(m: Method) -> str:
    return repr(m)


def _setup(pair: Pair, prompts, method, max_new_tokens, temperature, top_k, top_p, chat, trace, seed=0,
           batch_size=None):
    """Validate the request; return the static loop configuration and the tokenized prompts."""
    validate.generation(method, max_new_tokens, temperature, top_k, top_p, seed, batch_size)
    if not isinstance(trace, (bool, str)) or trace not in (False, True, "rounds"):
        raise ValueError(f"trace={trace!r}: use False, True (per round and position) or 'rounds' (per round only)")
    prompts = validate.prompts(prompts)
    m = Method.parse(method) if isinstance(method, str) else method
    if m.uses_draft and pair.draft is None:
        raise ValueError(f"method {m.name!r} needs a draft model; load the pair with draft=...")
    if m.draft_vocab and pair.layout is not None:
        raise ValueError("draft_vocab runs on one device for now: load the pair without a mesh (adasd: --mesh none), "
                         "or drop draft_vocab")
    ids = encode(pair, prompts, chat)
    if m.draft_vocab and not protocol.has_hook(pair.draft.decoder, "head_rows"):
        raise ValueError(f"draft_vocab needs the draft decoder's head_rows hook, which "
                         f"{type(pair.draft.decoder).__name__} lacks (adasd_jax.protocol): add it, or drop draft_vocab")
    lc = loop.LoopConfig(target=pair.target.decoder, draft=pair.draft.decoder if m.uses_draft else None, method=m,
                         sampling=Sampling(temperature, top_k, top_p), max_new_tokens=max_new_tokens,
                         eos_ids=pair.eos_ids, vocab=pair.vocab, trace=trace, layout=pair.layout, **pair.loop_options)
    limit = min(d.max_len for d in (lc.target, lc.draft) if d is not None)
    longest = max(map(len, ids))
    if longest + max_new_tokens + lc.k + 1 > limit:
        raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) + draft buffer ({lc.k + 1}) "
                         f"exceeds the models' context ({limit} positions): lower max_new_tokens or shorten the prompt")
    return lc, ids


def _pad(chunk: list[list[int]], lc: loop.LoopConfig):
    """Right-pad prompts into their length bucket; returns (prompts [B,P], lengths [B], cache length)."""
    P = bucket(max(map(len, chunk)))
    prompt = np.zeros((len(chunk), P), np.int32)
    for b, p in enumerate(chunk):
        prompt[b, :len(p)] = p
    return jnp.asarray(prompt), jnp.asarray([len(p) for p in chunk], jnp.int32), P + lc.max_new_tokens + lc.k + 2


def _initial_thresholds(pair, m, given, reset_state, batch, explicit):
    """The state a call starts from: given, else carried by the pair (unless reset), else fresh (None)."""
    thresholds = given if given is not None else (None if reset_state else pair.states.get(_state_key(m)))
    if thresholds is not None and m.per_row and thresholds.acc_n.shape != (batch,):
        if explicit:
            raise ValueError(f"per_row threshold state has shape {thresholds.acc_n.shape}, batch is {batch}")
        return None  # a carried per-row state from a different batch: start fresh
    return thresholds


def _row_metrics(m: Method, s) -> dict[str, np.ndarray]:
    mt = jax.tree.map(np.asarray, s.metrics)
    row = {f.name: getattr(mt, f.name) for f in dataclasses.fields(mt)}
    B = len(row["new_tokens"])
    row["t_g"] = np.broadcast_to(np.asarray(policies.t_g(m, s.method.thresholds)), (B,)).astype(np.float32)
    row["t_v"] = np.broadcast_to(np.asarray(s.method.thresholds.t_v), (B,)).astype(np.float32)
    return row


def _finish(pair, m, tokens, rows, thresholds, traces, compile_s, run_s) -> Output:
    pair.states[_state_key(m)] = thresholds
    metrics = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    texts = None
    if pair.tokenizer is not None:
        texts = [pair.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    tr = jax.tree.map(lambda *x: np.concatenate(x, axis=1), *traces) if traces else None
    result = Output(texts=texts, tokens=tokens, metrics=metrics, state=thresholds, trace=tr, compile_s=compile_s,
                    run_s=run_s)
    if metrics["nan"].any():
        rows_bad = np.nonzero(metrics["nan"])[0].tolist()
        raise NaNLogitsError(f"NaN logits in rows {rows_bad}: those rows stopped before emitting them "
                             "(try dtype='float32'; the partial output is on this exception's .output)", result)
    return result


def generate(pair: Pair, prompts, method: str | Method = policies.DEFAULT_METHOD, max_new_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, chat: bool = True,
             state: ThresholdState | None = None, reset_state: bool = False, seed: int = 0,
             batch_size: int | None = None, trace: bool | str = False, costs: CostTable | None = None) -> Output:
    """Generate for a list of prompts (strings or token-id lists). See the module docstring. A stop="cost" method
    runs with `costs`, else with the pair's cost table (measured at its first use, then kept on the pair)."""
    lc, ids = _setup(pair, prompts, method, max_new_tokens, temperature, top_k, top_p, chat, trace, seed, batch_size)
    m = lc.method
    bs = batch_size or len(ids)
    thresholds = state
    key = jax.random.key(seed)
    tokens, rows, traces, compile_s, run_s = [], [], [], 0.0, 0.0
    table, source = (costs, "given") if costs is not None else (None, "")
    for start in range(0, len(ids), bs):
        chunk = ids[start:start + bs]
        B = len(chunk)
        prompt, lengths, max_len = _pad(chunk, lc)
        compiled, c_s = _compiled(pair, lc, B, prompt.shape[1], max_len)
        compile_s += c_s
        if m.cost_aware and costs is None:
            t = time.perf_counter()
            table, source = cost_table(pair, lc, B, max_len)
            compile_s += time.perf_counter() - t  # warm-up: reported with compilation, apart from the run
        run_costs = table if m.cost_aware else CostTable.flat(len(lc.widths))
        thresholds = _initial_thresholds(pair, m, thresholds, reset_state, B, start == 0 and state is not None)
        key, sub = jax.random.split(key)
        draft_params = _draft_params(pair, m)
        inputs = (prompt, lengths, loop.init_method_state(m, B, thresholds), sub, run_costs)
        if pair.layout is not None:
            inputs = pair.layout.place(inputs, (*_input_shardings(pair.layout, prompt.shape, inputs[2]),
                                                jax.tree.map(lambda _: pair.layout.replicated, run_costs)))
        t = time.perf_counter()
        s = jax.block_until_ready(compiled(pair.target.params, draft_params, *inputs))
        run_s += time.perf_counter() - t
        thresholds = s.method.thresholds
        out, new = np.asarray(s.out), np.asarray(s.metrics.new_tokens)
        tokens += [out[b, :new[b]].tolist() for b in range(B)]
        rows.append(_row_metrics(m, s))
        if trace:
            traces.append(jax.tree.map(np.asarray, s.trace))
    out = _finish(pair, m, tokens, rows, thresholds, traces, compile_s, run_s)
    return dataclasses.replace(out, costs=table, cost_source=source) if m.cost_aware else out


def precompile(pair: Pair, prompts, method: str | Method = policies.DEFAULT_METHOD, max_new_tokens: int = 128,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, chat: bool = True,
               batch_size: int | None = None, trace: bool | str = False) -> float:
    """Compile, without running, what `generate` with the same arguments runs: one program per batch size and
    prompt-length bucket. Returns the seconds spent compiling (0.0 when every program was built already). Warms a
    server's buckets before its first request; calls from several threads compile at once (XLA releases the GIL)."""
    lc, ids = _setup(pair, prompts, method, max_new_tokens, temperature, top_k, top_p, chat, trace,
                     batch_size=batch_size)
    bs = batch_size or len(ids)
    secs = 0.0
    for start in range(0, len(ids), bs):
        chunk = ids[start:start + bs]
        prompt, _, max_len = _pad(chunk, lc)
        secs += _compiled(pair, lc, len(chunk), prompt.shape[1], max_len)[1]
    return secs


def prefill_s(pair: Pair, prompts, method: str | Method = "ar", max_new_tokens: int = 128, temperature: float = 0.0,
              chat: bool = True, repeats: int = 1) -> float:
    """Seconds that `generate` spends on the prompts before its first round (both models' prefill, as one batch),
    timed apart on the same jitted code; median of `repeats`, compilation excluded. The benchmark takes it out of
    `ar`'s time to compare the loop's per-token cost with one bare decode step. The program returns the whole state,
    both caches included: returning less lets XLA drop the work behind it (the draft's prefill, timed as nothing)."""
    if pair.layout is not None:
        raise ValueError("prefill_s times a pair on one device: load it without a mesh")
    lc, ids = _setup(pair, prompts, method, max_new_tokens, temperature, 0, 1.0, chat, False)
    prompt, lengths, max_len = _pad(ids, lc)
    B = len(ids)
    run, _ = _cached(pair, ("prefill", B, prompt.shape[1], lc, max_len), lambda: jax.jit(
        lambda pt, pd, p, n, ms, k: loop.prefill(pt, loop.with_draft_head(pd, lc), lc, p, n, max_len, ms, k)))
    args = (pair.target.params, _draft_params(pair, lc.method), prompt, lengths,
            loop.init_method_state(lc.method, B), jax.random.key(0))
    return float(np.median(_timings([functools.partial(run, *args)], repeats)[0]))


class Stream:
    """Iterate to get text (or token ids without a tokenizer) as rounds complete; `.output` at the end.

    Reuses the jitted prefill and round functions from a Python loop: one host sync per round,
    which is the price of streaming (`generate` runs the whole loop on the device instead).
    """

    def __init__(self, pair: Pair, prompt, method=policies.DEFAULT_METHOD, max_new_tokens=128, temperature=0.0,
                 top_k=0, top_p=1.0, chat=True, state=None, reset_state=False, seed=0, costs=None):
        self.pair = pair
        self.lc, ids = _setup(pair, [validate.one_prompt(prompt)], method, max_new_tokens, temperature, top_k, top_p,
                              chat, False, seed)
        self.prompt, self.lengths, self.max_len = _pad(ids, self.lc)
        self.costs, self.cost_source = (costs, "given") if costs is not None else (
            cost_table(pair, self.lc, 1, self.max_len) if self.lc.method.cost_aware else
            (CostTable.flat(len(self.lc.widths)), ""))
        self.thresholds = _initial_thresholds(pair, self.lc.method, state, reset_state, 1, state is not None)
        self.seed, self.output = seed, None

    def __iter__(self):
        pair, lc, m = self.pair, self.lc, self.lc.method
        t = time.perf_counter()
        (prefill, step, running), _ = _cached(pair, ("stream", 1, self.prompt.shape[1], lc, self.max_len), lambda: (
            jax.jit(functools.partial(loop.prefill), static_argnums=(2, 5)),
            jax.jit(functools.partial(loop.round_step), static_argnums=2),
            jax.jit(functools.partial(loop.running), static_argnums=0)))
        pd = loop.with_draft_head(_draft_params(pair, m), lc)
        s = prefill(pair.target.params, pd, lc, self.prompt, self.lengths, self.max_len,
                    loop.init_method_state(m, 1, self.thresholds), jax.random.key(self.seed))
        shown, text = 0, ""
        while True:
            n = int(s.metrics.new_tokens[0])  # host sync: once per round, outside any jitted loop
            if n > shown:
                new = np.asarray(s.out[0, :n]).tolist()
                if pair.tokenizer is None:
                    yield new[shown:]
                else:
                    full = pair.tokenizer.decode(new, skip_special_tokens=True)
                    yield full[len(text):]
                    text = full
                shown = n
            if not bool(running(lc, s)):
                break
            s = step(pair.target.params, pd, lc, s, self.costs)
        elapsed = time.perf_counter() - t  # includes compilation on a first call
        self.output = _finish(pair, m, [np.asarray(s.out[0, :shown]).tolist()], [_row_metrics(m, s)],
                              s.method.thresholds, [], 0.0, elapsed)
        if m.cost_aware:
            self.output = dataclasses.replace(self.output, costs=self.costs, cost_source=self.cost_source)


def stream(pair: Pair, prompt, **kw) -> Stream:
    return Stream(pair, prompt, **kw)



