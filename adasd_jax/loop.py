"""The jitted generation shared by every method.

prefill > while rounds: [draft while_loop (entropy stop) > one target verification and the acceptance over
its positions (lax.switch over a few static widths; vmap over rows) > emit > roll back both caches by
resetting lengths].
No host sync, no Python loop and no recompilation inside a generation.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from adasd_jax import policies, protocol
from adasd_jax.divergence import Sampling, argmax, choose, entropy, js_distance, sample, transform
from adasd_jax.policies import Method
from adasd_jax.state import CostTable, LoopState, MethodState, Metrics, ThresholdState, Trace

# Candidate verification widths (proposals per target call). The target then runs w + 1 rows, a power
# of two: XLA:CPU's bf16 dot streams the weights once per 8- or 16-row tile, so 9 rows cost 1.5x one row
# and 17 rows 2.2x, while 2-8 rows cost 1.0-1.4x (docs/results/engine/verify-widths-cpu/). The draft cap's
# width is K_max (17 rows at 16), which models.linear runs as 32 rows on CPU (docs/results/engine/row-tiles/).
WIDTHS = (0, 1, 3, 7, 15, 31, 63)


def verify_widths(cap: int) -> tuple[int, ...]:
    """The static widths compiled for a draft buffer of `cap` proposals: the candidates below it, then cap."""
    return tuple(w for w in WIDTHS if w < cap) + (cap,)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything static about one generation: compiled once per value (and per shape bucket)."""

    target: protocol.Decoder  # static, hashable decoders (adasd_jax.protocol; models.Decoder is the reference)
    draft: protocol.Decoder | None
    method: Method
    sampling: Sampling = Sampling()
    max_new_tokens: int = 128
    eos_ids: tuple[int, ...] = ()
    vocab: int = 0  # shared vocabulary (logits beyond it are padding rows and are dropped)
    trace: bool | str = False  # True: per round and verified position; "rounds": per round only (see Trace)
    layout: Any = None  # sharding.Layout: pins the loop state to a mesh (None: one device, no constraints)
    sequential_positions: bool | None = None  # acceptance one position at a time (None: on XLA:CPU past 8; per_position)

    @property
    def k(self) -> int:
        """Static draft buffer: the most proposals a round can make."""
        return self.method.cap

    @property
    def widths(self) -> tuple[int, ...]:
        return verify_widths(self.k)

    @property
    def out_len(self) -> int:
        return self.max_new_tokens + self.k + 1


# ---------------------------------------------------------------- prefill

def prefill(pt, pd, lc: LoopConfig, prompts, lengths, max_len: int, mstate: MethodState, key) -> LoopState:
    """Run the prompts through both models; the target's next token is the first emitted token."""
    B = prompts.shape[0]
    dtype_t = protocol.activation_dtype(lc.target, pt)
    tcache = lc.target.init_cache(B, max_len, dtype_t)
    logits, tcache = lc.target.forward(pt, prompts, tcache, lengths, lengths - 1)
    logits = logits[:, 0, :lc.vocab]
    key, k0 = jax.random.split(key)
    y0 = choose(k0, logits, lc.sampling)
    if lc.method.uses_draft:
        dcache = lc.draft.init_cache(B, max_len, protocol.activation_dtype(lc.draft, draft_weights(lc, pd)))
        _, dcache = draft_forward(pd, lc, prompts, dcache, lengths, lengths - 1)
    else:
        dcache = protocol.NoCache(lengths=jnp.zeros((B,), jnp.int32))
    nan = jnp.isnan(logits).any(-1)
    out = jnp.zeros((B, lc.out_len), jnp.int32).at[:, 0].set(jnp.where(nan, 0, y0))
    metrics = Metrics.zeros(B).replace(new_tokens=jnp.where(nan, 0, 1), nan=nan.astype(jnp.int32))
    done = nan | jnp.isin(y0, jnp.asarray(lc.eos_ids, jnp.int32)) | (lc.max_new_tokens <= 1)
    trace = None
    if lc.trace:
        R, K1 = lc.max_new_tokens, lc.k + 1
        per_position = (lambda: jnp.zeros((R, B, K1))) if lc.trace != "rounds" else (lambda: None)
        trace = Trace(draft_len=jnp.zeros((R, B), jnp.int32), accepted=jnp.zeros((R, B), jnp.int32),
                      entropy=per_position(), signal=per_position(), js=per_position(), t_g=jnp.zeros((R, B)),
                      t_v=jnp.zeros((R, B)))
    s = LoopState(target_cache=tcache, draft_cache=dcache, last=y0,
                  pending=jnp.stack([y0, jnp.zeros_like(y0)], 1), n_pending=jnp.ones((B,), jnp.int32),
                  out=out, done=done, method=mstate, metrics=metrics, key=key, step=jnp.zeros((), jnp.int32),
                  trace=trace)
    return _constrain(lc, s)


def _constrain(lc: LoopConfig, s: LoopState) -> LoopState:
    """On a mesh, pin the state to the sharding table's layout (a no-op on one device)."""
    if lc.layout is None:
        return s
    return lc.layout.constrain(s, lc.target, lc.draft if lc.method.uses_draft else None)


# ---------------------------------------------------------------- draft

def with_draft_head(pd, lc: LoopConfig):
    """With `draft_vocab`, add the draft's output rows for its token subset `pd["vocab_ids"]` (FR-Spec; the decoder's
    `head_rows` hook): gathered once per generation, outside the loop, so that each draft step streams N head rows
    instead of the vocabulary."""
    if not lc.method.draft_vocab or pd is None:
        return pd
    return {**pd, "vocab_head": lc.draft.head_rows(pd["params"], pd["vocab_ids"])}


def draft_weights(lc: LoopConfig, pd):
    """The draft's own parameters: with `draft_vocab`, the loop carries {"params", "vocab_ids", "vocab_head"}."""
    return pd["params"] if lc.method.draft_vocab else pd


def draft_forward(pd, lc: LoopConfig, tokens, cache, num_new, logits_index=None):
    """The draft's forward with logits over the shared vocabulary; tokens outside a draft_vocab subset get -inf
    (zero probability: never proposed, and speculative sampling's residual gives them their full target mass)."""
    if not lc.method.draft_vocab:
        logits, cache = lc.draft.forward(pd, tokens, cache, num_new, logits_index)
        return logits[..., :lc.vocab], cache
    sub, cache = lc.draft.forward(pd["params"], tokens, cache, num_new, logits_index, head=pd["vocab_head"])
    full = jnp.full(sub.shape[:-1] + (lc.vocab,), -jnp.inf, sub.dtype)
    return full.at[..., pd["vocab_ids"]].set(sub), cache


def per_row_rule(m: Method, f, t, *xs):
    """A rule of one row's state (or what was derived from it) over the batch: the row's own when per_row, else the
    pooled one."""
    return jax.vmap(f, in_axes=(0 if m.per_row else None,) + (0,) * len(xs))(t, *xs)


def catch_up(pd, lc: LoopConfig, s: LoopState, live):
    """Feed the draft the tokens it missed while rounds skipped it (stop="cost"), a buffer's width at a time, until
    every live row has at most 2 pending; returns the draft cache, the [B,2] pending tokens and their counts."""
    B, C, O = s.last.shape[0], lc.k + 1, s.out.shape[1]
    at = lambda n_pend, width: jnp.clip((s.metrics.new_tokens - n_pend)[:, None] + jnp.arange(width), 0, O - 1)

    def chunk(c):  # pending tokens are out[new_tokens - n_pending : new_tokens]
        cache, n_pend = c
        take = jnp.where(live, jnp.clip(n_pend - 2, 0, C), 0)
        _, cache = draft_forward(pd, lc, jnp.take_along_axis(s.out, at(n_pend, C), 1), cache, take,
                                 jnp.zeros((B,), jnp.int32))
        return cache, n_pend - take

    def feed_all(c):
        cache, n_pend = jax.lax.while_loop(lambda c: (live & (c[1] > 2)).any(), chunk, c)
        return cache, jnp.take_along_axis(s.out, at(n_pend, 2), 1), n_pend

    # Most rounds have nothing to catch up, and the cond matters then: on XLA:CPU entering the loop cost about 60 ms
    # (more than a draft step) even when it fed nothing (default pair, 16-proposal rounds, 2026-12-07).
    return jax.lax.cond((live & (s.n_pending > 2)).any(), feed_all, lambda c: (c[0], s.pending, c[1]),
                        (s.draft_cache, s.n_pending))


def draft(pd, lc: LoopConfig, s: LoopState, key, costs: CostTable):
    """Propose up to cap tokens per row, token by token, stopping rows by the method's rule.

    Returns proposals [B,K], counts n [B], declined [B] (the rule stopped the row at a token it had computed),
    draft steps taken per row [B], the draft logits q_1..q_{n+1} [B,K+1,V] (slot n holds the declined position,
    unless it was proposed) and the advanced draft cache.
    """
    m, K, V = lc.method, lc.k, lc.vocab
    B = s.last.shape[0]
    # no proposal past the token budget: a round emits at most n + 1 tokens
    budget = jnp.maximum(lc.max_new_tokens - s.metrics.new_tokens - 1, 0)
    cap = jnp.minimum(policies.draft_cap(m, s.method), budget)
    want = ~s.done & (cap > 0)
    q0 = jnp.zeros((B, V), jnp.float32)
    if m.cost_aware:  # a round may skip the draft: its cache then lags, and catches up when drafting resumes
        v = policies.verify_cost(costs, lc.widths, K)
        t = s.method.thresholds
        # per_row: each row decides as if alone; pooled: the batch decides as one decoder (one draft step serves
        # every row, and the verification is as wide as the longest draft)
        if m.per_row:
            want = want & per_row_rule(m, lambda t, c: policies.start_drafting(t, costs, v, c), t, cap)
            model = jax.vmap(policies.cost_model, (0, None))(t, costs)
        else:
            share = 1.0 / jnp.maximum((~s.done).sum(), 1).astype(jnp.float32)  # of the round's cost, per live row
            want = want & policies.batch_start_drafting(t, costs, v, cap, want, share)
            model = policies.cost_model(t, costs)

        def feed_pending(cache):
            cache, pending, n_pend = catch_up(pd, lc, s.replace(draft_cache=cache), ~s.done)
            q, cache = draft_forward(pd, lc, pending, cache, n_pend, n_pend - 1)
            return q[:, 0], cache

        q, cache = jax.lax.cond(want.any(), feed_pending, lambda cache: (q0, cache), s.draft_cache)
    else:
        q, cache = draft_forward(pd, lc, s.pending, s.draft_cache, s.n_pending, s.n_pending - 1)
        q = q[:, 0]
    init = dict(i=jnp.zeros((), jnp.int32), q=q, cache=cache, want=want, steps=want.astype(jnp.int32),
                survival=jnp.ones((B,), jnp.float32), n=jnp.zeros((B,), jnp.int32), declined=jnp.zeros((B,), bool),
                props=jnp.zeros((B, K), jnp.int32), q_buf=jnp.zeros((B, K + 1, V), jnp.float32))

    def body(c):
        h = policies.draft_signal(m, c["q"]) if m.cost_aware else entropy(c["q"])
        survival = c["survival"]
        if m.cost_aware:  # every wanting row sits at slot i: it has computed q_k, k = i + 1
            if m.per_row:
                rule = lambda model, surv, h, cap: policies.cost_step(model, costs, v, cap, m, V, surv, h, c["i"] + 1)
                propose, go_on, survival = per_row_rule(m, rule, model, survival, h, cap)
            else:
                propose, go_on, survival = policies.batch_cost_step(model, costs, v, cap, m, V, survival, h,
                                                                    c["i"] + 1, c["want"], share)
            stop, propose = c["want"] & ~propose, c["want"] & propose
            go_on = go_on & ~stop
        else:
            stop = c["want"] & policies.stop_drafting(m, s.method, h)
            # propose_declined: the stopping token's draft step is paid already, so it is proposed too (then stops)
            propose = c["want"] if m.propose_declined else c["want"] & ~stop
            go_on = ~stop
        x = choose(jax.random.fold_in(key, c["i"]), c["q"], lc.sampling)
        n = c["n"] + propose
        want = propose & go_on & (n < cap)  # rows that go on drafting

        def feed(cache):
            logits, cache = draft_forward(pd, lc, x[:, None], cache, want.astype(jnp.int32))
            return logits[:, 0], cache

        q_next, cache = jax.lax.cond(want.any(), feed, lambda cache: (c["q"], cache), c["cache"])
        return dict(i=c["i"] + 1, q=q_next, cache=cache, want=want, steps=c["steps"] + want, survival=survival,
                    n=n, declined=c["declined"] | stop,
                    props=jax.lax.dynamic_update_index_in_dim(c["props"], jnp.where(propose, x, 0), c["i"], 1),
                    q_buf=jax.lax.dynamic_update_index_in_dim(c["q_buf"], c["q"], c["i"], 1))

    c = jax.lax.while_loop(lambda c: c["want"].any(), body, init)
    return c["props"], c["n"], c["declined"], c["steps"], c["q_buf"], c["cache"]


# ---------------------------------------------------------------- verify

def verify(pt, lc: LoopConfig, s: LoopState, props, n, declined, q_buf, t_v, keys):
    """One target forward over [last, x_1..x_w] for the smallest static width w >= the longest proposal, and
    the acceptance of every row over those w + 1 positions only: the divergences over the vocabulary cost
    as much as a draft step at the widest buffer (17 x 152k), so they follow the width, not the buffer.

    Returns emitted [B,K+1], accepted prefix lengths a [B], threshold contributions, per-row info with d and
    ent padded to [B,K+1], the target cache, and the index of the width that ran.
    """
    widths, K = lc.widths, lc.k
    longest = jnp.max(jnp.where(s.done, 0, n))
    index = jnp.searchsorted(jnp.asarray(widths), longest)

    def branch(w):
        def run(cache):
            tokens = jnp.concatenate([s.last[:, None], props[:, :w]], axis=1)
            logits, cache = lc.target.forward(pt, tokens, cache, jnp.zeros_like(n))
            p = logits[..., :lc.vocab]
            q = p if q_buf is None else q_buf[:, :w + 1]
            emitted, a, contrib, info = jax.vmap(functools.partial(accept_row, lc))(
                p, q, props[:, :w], n, declined, t_v, keys)
            pad = lambda x: jnp.pad(x, ((0, 0), (0, K - w)))
            return (pad(emitted), a, contrib, dict(info, d=pad(info["d"]), ent=pad(info["ent"]),
                                                   sig=pad(info["sig"]))), cache
        return run

    return (*jax.lax.switch(index, [branch(w) for w in widths], s.target_cache), index)


# ---------------------------------------------------------------- accept (one row; vmapped)

def per_position(f, *xs, sequential: bool | None = None):
    """f over the leading (position) axis. At a 152k vocabulary a pass over all 17 positions of a wide round streams
    10 MB, which misses XLA:CPU's caches: there the round's divergences cost 20-29 ms at once against 10-12 ms a
    position at a time, while up to 8 positions cost the same either way (docs/results/engine/accept-width/). Accelerators
    take every position in one kernel. `sequential` (LoopConfig.sequential_positions) forces either way."""
    if sequential is None:
        sequential = jax.default_backend() == "cpu" and xs[0].shape[0] > 8
    return jax.lax.map(lambda a: f(*a), xs) if sequential else jax.vmap(f)(*xs)


def strict_verdicts(sampling: Sampling, p_logits, q_logits, x, u):
    """The target's own verdicts on tokens x: greedy match, or u < min(1, p'(x) / q'(x))."""
    if sampling.greedy:
        return x == argmax(p_logits)
    lp = jnp.take_along_axis(transform(p_logits, sampling), x[..., None], -1)[..., 0]
    lq = jnp.take_along_axis(transform(q_logits, sampling), x[..., None], -1)[..., 0]
    return u < jnp.exp(jnp.minimum(0.0, lp - lq))


def residual_sample(key, p_logits, q_logits, sampling: Sampling):
    """A sample from norm(max(0, p' - q')), falling back to p' where the residual is empty."""
    p, q = jnp.exp(transform(p_logits, sampling)), jnp.exp(transform(q_logits, sampling))
    res = jnp.maximum(p - q, 0.0)
    res = jnp.where(res.sum() > 0, res, p)
    return sample(key, jnp.log(res))


def accept_row(lc: LoopConfig, p_logits, q_logits, props, n, declined, t_v, key):
    """Verdicts, emission and statistics for one row. p/q_logits: [w+1,V]; props: [w], w <= the buffer K."""
    m, s, K = lc.method, lc.sampling, props.shape[0]
    k_u, k_y, k_dec, k_du = jax.random.split(key, 4)
    pos = jnp.arange(K)

    def position(p_l, q_l, x, u):  # every pass over the vocabulary that a position needs
        ent = entropy(q_l)
        sig = policies.draft_signal(m, q_l) if m.cost_aware else ent
        return js_distance(jax.nn.softmax(p_l), jax.nn.softmax(q_l)), ent, sig, strict_verdicts(s, p_l, q_l, x, u)

    u = jax.random.uniform(k_u, (lc.k,))[:K]
    d, ent, sig, strict = per_position(position, p_logits, q_logits, jnp.pad(props, (0, 1)), jnp.pad(u, (0, 1)),
                                       sequential=lc.sequential_positions)  # [K+1]
    strict = strict[:K]  # the last position has no proposal
    valid = pos < n
    ok = policies.accept(m, strict, d[:K], t_v) & valid
    a = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))  # accepted prefix length
    rejected = a < n
    p_r, q_r = p_logits[a], q_logits[a]
    if s.greedy:
        y = argmax(p_r)
    elif policies.residual_on_reject(m):
        y = jnp.where(rejected, residual_sample(k_y, p_r, q_r, s), choose(k_y, p_r, s))
    else:
        y = choose(k_y, p_r, s)
    emitted = jnp.where(jnp.arange(K + 1) < a, jnp.pad(props, (0, 1)), 0).at[a].set(y)
    # statistics over the positions whose verdict was computed, plus the declined token if counted
    verdict = strict if m.stats_on == "strict" else ok
    counted = (pos <= a) & valid
    if m.name == "adasd" and m.count_declined and not m.propose_declined:  # static: a declined token left unproposed
        x_dec = choose(k_dec, q_logits[n], s)
        strict_dec = strict_verdicts(s, p_logits[n], q_logits[n], x_dec, jax.random.uniform(k_du))
        final_dec = policies.accept(m, strict_dec, d[n], t_v)
        verdict_dec = strict_dec if m.stats_on == "strict" else final_dec
        use_dec = declined & ~rejected
    else:
        verdict_dec = final_dec = use_dec = jnp.zeros((), bool)
    contrib = policies.threshold_contribution(
        m, jnp.append(verdict, verdict_dec), jnp.concatenate([d[:K], d[n][None]]),
        jnp.concatenate([ent[:K], ent[n][None]]), jnp.concatenate([sig[:K], sig[n][None]]),
        jnp.append(counted, use_dec), jnp.append(ok, final_dec), lc.vocab)
    bad = jnp.isnan(p_logits[: K + 1]).any(-1) & (jnp.arange(K + 1) <= n)
    info = dict(strict=jnp.sum(strict & counted), lossy=jnp.sum(ok & ~strict & (pos < a)),
                nan=bad.any() | (jnp.isnan(q_logits).any(-1) & (jnp.arange(K + 1) <= n)).any(), d=d, ent=ent,
                sig=sig)
    return emitted, a, contrib, info


# ---------------------------------------------------------------- one round

def round_step(pt, pd, lc: LoopConfig, s: LoopState, costs: CostTable | None = None) -> LoopState:
    m, K = lc.method, lc.k
    B = s.last.shape[0]
    costs = CostTable.flat(len(lc.widths)) if costs is None else costs
    key, k_draft, k_accept = jax.random.split(s.key, 3)
    if m.uses_draft:
        props, n, declined, steps, q_buf, dcache = draft(pd, lc, s, k_draft, costs)
    else:
        props, n, declined = jnp.zeros((B, 0), jnp.int32), jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool)
        steps, q_buf, dcache = jnp.zeros((B,), jnp.int32), None, s.draft_cache
    thresholds = s.method.thresholds
    t_v = jnp.broadcast_to(thresholds.t_v, (B,))
    (emitted, a, contrib, info), tcache, width = verify(pt, lc, s, props, n, declined, q_buf, t_v,
                                                        jax.random.split(k_accept, B))
    live = ~s.done & ~info["nan"]

    # emit: cut at EOS and at max_new_tokens
    count = a + 1
    slots = jnp.arange(K + 1)[None, :]
    is_eos = jnp.isin(emitted, jnp.asarray(lc.eos_ids, jnp.int32)) & (slots < count[:, None])
    hit_eos = is_eos.any(-1)
    count = jnp.where(hit_eos, jnp.argmax(is_eos, -1) + 1, count)
    count = jnp.where(live, jnp.minimum(count, lc.max_new_tokens - s.metrics.new_tokens), 0)
    where = jnp.where(slots < count[:, None], s.metrics.new_tokens[:, None] + slots, lc.out_len)  # OOB: dropped
    out = s.out.at[jnp.arange(B)[:, None], where].set(emitted, mode="drop")
    new_tokens = s.metrics.new_tokens + count
    done = s.done | info["nan"] | (live & hit_eos) | (new_tokens >= lc.max_new_tokens)

    # roll back: the target keeps last, x_1..x_a; the draft keeps what it has of that, the rest is pending
    L = s.target_cache.lengths
    committed = L + 1 + a
    tcache = protocol.with_lengths(tcache, jnp.where(live, committed, L))
    y = emitted[jnp.arange(B), a]
    if m.uses_draft:
        d_len = jnp.minimum(committed, dcache.lengths)
        n_pend = committed - d_len + 1  # 1 or 2
        prev = emitted[jnp.arange(B), jnp.maximum(a - 1, 0)]
        pending = jnp.where((n_pend == 2)[:, None], jnp.stack([prev, y], 1), jnp.stack([y, jnp.zeros_like(y)], 1))
        dcache = protocol.with_lengths(dcache, jnp.where(live, d_len, s.draft_cache.lengths))
        pending = jnp.where(live[:, None], pending, s.pending)
        n_pend = jnp.where(live, n_pend, s.n_pending)
    else:
        pending, n_pend = s.pending, s.n_pending

    mt = s.metrics
    w = lambda x: jnp.where(live, x, 0)
    metrics = mt.replace(new_tokens=new_tokens, rounds=mt.rounds + live, drafted=mt.drafted + w(n),
                         accepted=mt.accepted + w(a), strict=mt.strict + w(info["strict"]),
                         lossy=mt.lossy + w(info["lossy"]), declined=mt.declined + w(declined),
                         nan=mt.nan | (~s.done & info["nan"]), draft_steps=mt.draft_steps + w(steps))
    if m.cost_aware:  # the running rate: each row's tokens against its draft steps and the round's verification
        # pooled, every live row is charged the round's cost: its longest draft and its verification
        steps = steps if m.per_row else jnp.broadcast_to(jnp.where(live, steps, 0).max(), steps.shape)
        contrib = contrib.replace(rate_tokens=count.astype(jnp.float32),
                                  rate_cost=steps * costs.draft + costs.verify[width])
    mstate = policies.update(m, s.method, contrib, n, a, live)
    trace = s.trace
    if trace is not None:
        at = lambda buf, x: None if buf is None else jax.lax.dynamic_update_index_in_dim(buf, x, s.step, 0)
        trace = Trace(draft_len=at(trace.draft_len, w(n)), accepted=at(trace.accepted, w(a)),
                      entropy=at(trace.entropy, info["ent"]), signal=at(trace.signal, info["sig"]),
                      js=at(trace.js, info["d"]),
                      t_g=at(trace.t_g, jnp.broadcast_to(policies.t_g(m, thresholds), (B,))), t_v=at(trace.t_v, t_v))
    return _constrain(lc, LoopState(target_cache=tcache, draft_cache=dcache, last=jnp.where(live, y, s.last),
                                    pending=pending, n_pending=n_pend, out=out, done=done, method=mstate,
                                    metrics=metrics, key=key, step=s.step + 1, trace=trace))


def running(lc: LoopConfig, s: LoopState) -> jax.Array:
    return ~s.done.all() & (s.step < lc.max_new_tokens)


def generate(pt, pd, lc: LoopConfig, prompts, lengths, max_len: int, mstate: MethodState, key,
             costs: CostTable | None = None):
    """The whole generation under one jit: prefill, then rounds until every row is done. `costs` (read by
    stop="cost" only) is a dynamic argument: a new table never recompiles."""
    pd = with_draft_head(pd, lc)
    s = prefill(pt, pd, lc, prompts, lengths, max_len, mstate, key)
    s = jax.lax.while_loop(functools.partial(running, lc), functools.partial(round_step, pt, pd, lc, costs=costs), s)
    s = s.replace(target_cache=None, draft_cache=None)
    if lc.layout is not None:  # small results, whole on every device: every process can read them
        s = jax.lax.with_sharding_constraint(s, jax.tree.map(lambda _: lc.layout.replicated, s))
    return s


def init_method_state(m: Method, batch: int, thresholds: ThresholdState | None = None) -> MethodState:
    s = policies.init_state(m, batch)
    return s if thresholds is None else s.replace(thresholds=thresholds)
