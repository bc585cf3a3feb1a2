"""The cost-aware stop (adasd:stop=cost) against a plain-numpy reading of its rule, round by round, and its limits."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adasd_jax
from adasd_jax import Method, engine, loop, policies
from adasd_jax.state import CostTable, ThresholdState
from conftest import make_tiny_pair

MAX_NEW = 24


# ---------------------------------------------------------------- the rule in plain numpy

def ref_non_increasing(y, w):
    """Pool adjacent violators: the weighted least-squares non-increasing fit."""
    blocks = []  # [mean, weight, size]
    for v, wt in zip(y, w):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (v2, w2, n2), (v1, w1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([[v] * n for v, _, n in blocks])


def ref_acceptance(bin_n, bin_acc):
    abar = (bin_acc.sum() + 1) / (bin_n.sum() + 1)
    w = bin_n + 1 / len(bin_n)  # one pseudo-verdict at abar shared by the bins
    return ref_non_increasing((bin_acc + abar / len(bin_n)) / w, w), abar


def ref_bin(h, bins, vocab):
    h_max = np.log(vocab)
    return int(min(bins - 1, np.floor(bins * np.sqrt(min(max(h, 0.0), h_max) / h_max))))


class RefRule:
    """The cost-aware stop as the algorithm page states it, for one state (pooled) and one cost table."""

    def __init__(self, t: ThresholdState, c_d: float, verify: np.ndarray, widths, cap: int, vocab: int):
        self.a, self.abar = ref_acceptance(np.asarray(t.bin_n, np.float64), np.asarray(t.bin_acc, np.float64))
        self.R = (float(t.rate_tokens) + 1) / (float(t.rate_cost) + verify[0])
        self.c_d, self.cap, self.vocab, self.bins = c_d, cap, vocab, t.bin_n.shape[-1]
        self.V = [verify[next(i for i, w in enumerate(widths) if w >= k)] for k in range(cap + 1)]

    def ahead(self, S, k):
        gains = [S * sum(self.abar ** j for j in range(1, m + 1)) - self.R * (m * self.c_d + self.V[k + m] - self.V[k])
                 for m in range(1, self.cap - k + 1)]
        return max(gains, default=-np.inf)

    def round(self, entropies):
        """(proposals n, declined, draft steps) for a row whose draft computes these entropies in turn."""
        if not self.ahead(1.0, 0) > 0:
            return 0, False, 0
        S, k = 1.0, 1
        while True:
            S_k = S * self.a[ref_bin(entropies[k - 1], self.bins, self.vocab)]
            ahead = self.ahead(S_k, k)
            if not S_k - self.R * (self.V[k] - self.V[k - 1]) + max(ahead, 0.0) > 0:
                return k - 1, True, k
            if not ahead > 0:
                return k, False, k
            S, k = S_k, k + 1

    def batch_ahead(self, S, k, room, share):
        """The pooled batch's lookahead: rows' expected tokens per live row (row b adds at most room[b]) against
        one round's extra draft steps and wider verification."""
        K = len(self.V) - 1
        gains = [share * sum(s * sum(self.abar ** j for j in range(1, min(m, r) + 1)) for s, r in zip(S, room))
                 - self.R * (m * self.c_d + self.V[min(k + m, K)] - self.V[k]) for m in range(1, max(room) + 1)]
        return max(gains, default=-np.inf)

    def batch_round(self, entropies, caps, live):
        """(proposals [B], declined [B], draft steps [B]) of a pooled batch: rows that want to draft (live, cap > 0)
        draft and propose together while it pays per live row; each stops at its cap."""
        B, share = len(caps), 1.0 / max(sum(live), 1)
        n, declined = [0] * B, [False] * B
        active = [bool(live[b]) and caps[b] > 0 for b in range(B)]
        steps = [int(x) for x in active]
        if not any(active) or not self.batch_ahead([float(x) for x in active], 0,
                                                   [c if x else 0 for c, x in zip(caps, active)], share) > 0:
            return [0] * B, [False] * B, [0] * B
        S, k = [1.0] * B, 1
        while True:
            S_k = [S[b] * self.a[ref_bin(entropies[b][k - 1], self.bins, self.vocab)] if active[b] else 0.0
                   for b in range(B)]
            ahead = self.batch_ahead(S_k, k, [caps[b] - k if active[b] else 0 for b in range(B)], share)
            if not share * sum(S_k) - self.R * (self.V[k] - self.V[k - 1]) + max(ahead, 0.0) > 0:
                return n, [d or a for d, a in zip(declined, active)], steps
            n = [k if active[b] else n[b] for b in range(B)]
            active = [active[b] and ahead > 0 and k < caps[b] for b in range(B)]
            if not any(active):
                return n, declined, steps
            steps = [s + a for s, a in zip(steps, active)]
            S, k = S_k, k + 1


def random_state(rng, bins=8, shape=()):
    n = rng.integers(0, 40, (*shape, bins)).astype(np.float32)
    acc = np.floor(n * np.clip(np.linspace(0.95, 0.2, bins) + rng.normal(0, 0.2, bins), 0, 1)).astype(np.float32)
    t = ThresholdState.init(shape, bins)
    return t.replace(bin_n=jnp.asarray(n), bin_acc=jnp.asarray(acc),
                     rate_tokens=jnp.float32(rng.uniform(0, 60)), rate_cost=jnp.float32(rng.uniform(1, 40)))


def test_acceptance_model_is_the_monotone_fit_of_the_counts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = random_state(rng, bins=int(rng.integers(2, 40)))
        a, abar = policies.acceptance(t)
        ra, rabar = ref_acceptance(np.asarray(t.bin_n, np.float64), np.asarray(t.bin_acc, np.float64))
        np.testing.assert_allclose(a, ra, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(abar, rabar, rtol=1e-6)
        assert (np.diff(np.asarray(a)) <= 1e-6).all()
    a, abar = policies.acceptance(ThresholdState.init((), 6))
    assert float(abar) == 1.0 and np.allclose(a, 1.0)  # nothing seen: optimistic, so that a new draft is tried
    # thousands of verdicts beside empty bins: the pseudo-verdicts (1/N each) are not lost to f32 rounding
    n, acc = np.asarray([9000, 0, 0, 3, 0, 40, 0, 0], np.float32), np.asarray([8990, 0, 0, 1, 0, 4, 0, 0], np.float32)
    t = ThresholdState.init((), 8).replace(bin_n=jnp.asarray(n), bin_acc=jnp.asarray(acc))
    a, abar = policies.acceptance(t)
    ra, rabar = ref_acceptance(n.astype(np.float64), acc.astype(np.float64))
    np.testing.assert_allclose(a, ra, rtol=1e-5)
    assert ra[3] < 0.4  # one rejection weighs more than the shared prior: the curve follows the verdicts


def test_draft_signal_is_the_top1_surprisal_or_the_entropy():
    logits = jax.random.normal(jax.random.key(0), (5, 300)) * jnp.asarray([0.1, 1.0, 3.0, 8.0, 30.0])[:, None]
    q = np.asarray(jax.nn.softmax(logits.astype(jnp.float64) if jax.config.x64_enabled else logits), np.float64)
    top1 = policies.draft_signal(Method("adasd", stop="cost"), logits)
    ent = policies.draft_signal(Method("adasd", stop="cost", signal="entropy"), logits)
    np.testing.assert_allclose(top1, -np.log(q.max(-1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ent, -(q * np.log(np.maximum(q, 1e-30))).sum(-1), rtol=1e-4, atol=1e-5)
    assert (np.asarray(top1) <= np.asarray(ent) + 1e-5).all()  # min-entropy never exceeds the entropy


def test_decisions_match_the_reference():
    rng = np.random.default_rng(1)
    widths, K, vocab = (0, 1, 3, 7, 12), 12, 50
    seen = {"skip": 0, "declined": 0, "stopped": 0, "cap": 0}
    for _ in range(150):
        t = random_state(rng)
        c_d = float(rng.choice([0.0, 0.1, 0.3, 0.6, 1.5]))
        verify = np.cumsum(np.concatenate([[1.0], rng.uniform(0, 0.3, len(widths) - 1)])).astype(np.float32)
        costs = CostTable(draft=jnp.float32(c_d), verify=jnp.asarray(verify))
        ref = RefRule(t, c_d, verify, widths, K, vocab)
        ent = rng.exponential(rng.choice([0.2, 1.0, 2.5]), K).astype(np.float32)
        v = policies.verify_cost(costs, widths, K)
        m = Method("adasd", k_max=K, stop="cost", bins=t.bins)
        start = bool(policies.start_drafting(t, costs, v, K))
        n, declined, steps = 0, False, 0
        if start:  # the loop's decisions, step by step
            S, steps = jnp.float32(1.0), 1
            for k in range(1, K + 1):
                propose, go_on, S = policies.cost_step(policies.cost_model(t, costs), costs, v, K, m, vocab, S,
                                                       jnp.float32(ent[k - 1]), k)
                if not propose:
                    declined = True
                    break
                n = k
                if not go_on or k == K:
                    break
                steps += 1
        assert (n, declined, steps) == ref.round(ent)
        seen["skip"] += not start
        seen["declined"] += declined
        seen["cap"] += n == K
        seen["stopped"] += start and not declined and n < K
    assert min(seen.values()) > 0, seen  # every branch of the rule was taken


def test_batch_decisions_match_the_reference():
    """The pooled batch's rule (three rows, one live row done, caps that differ as at the token budget) step by step
    as the loop takes it, against the numpy reading; with one row it is the single-row rule."""
    rng = np.random.default_rng(2)
    widths, K, vocab = (0, 1, 3, 7, 12), 12, 50
    seen = {"skip": 0, "declined": 0, "stopped": 0, "ragged": 0, "one_row": 0}
    for trial in range(150):
        t = random_state(rng)
        c_d = float(rng.choice([0.0, 0.1, 0.3, 0.6]))
        verify = np.cumsum(np.concatenate([[1.0], rng.uniform(0, 0.6, len(widths) - 1)])).astype(np.float32)
        costs = CostTable(draft=jnp.float32(c_d), verify=jnp.asarray(verify))
        ref = RefRule(t, c_d, verify, widths, K, vocab)
        B = 1 if trial % 3 == 0 else 3
        live = np.ones(B, bool) if B == 1 else np.asarray([True, True, rng.random() < 0.5])
        caps = rng.choice([K, K, 2, 0], B) if B > 1 else np.asarray([K])
        ent = rng.exponential(rng.choice([0.2, 1.0, 2.5]), (B, K)).astype(np.float32)
        v = policies.verify_cost(costs, widths, K)
        m = Method("adasd", k_max=K, stop="cost", bins=t.bins)
        share = jnp.float32(1.0 / live.sum())
        want = jnp.asarray(live & (caps > 0))
        cap = jnp.asarray(caps, jnp.int32)
        want = want & policies.batch_start_drafting(t, costs, v, cap, want, share)
        n, declined, steps = np.zeros(B, int), np.zeros(B, bool), np.asarray(want, int)
        S, model = jnp.ones(B, jnp.float32), policies.cost_model(t, costs)
        for k in range(1, K + 1):  # the loop's body
            if not want.any():
                break
            propose, go_on, S = policies.batch_cost_step(model, costs, v, cap, m, vocab, S, jnp.asarray(ent[:, k - 1]),
                                                         k, want, share)
            stop, propose = want & ~propose, want & propose
            declined |= np.asarray(stop)
            n += np.asarray(propose)
            want = propose & go_on & ~stop & (jnp.asarray(n) < cap)
            steps += np.asarray(want)
        expect = ref.batch_round(ent, list(caps), list(live))
        assert (n.tolist(), declined.tolist(), steps.tolist()) == (list(expect[0]), list(expect[1]), list(expect[2]))
        if B == 1:
            assert (n[0], declined[0], steps[0]) == ref.round(ent[0])
            seen["one_row"] += 1
        seen["skip"] += not steps.any()
        seen["declined"] += declined.any()
        seen["stopped"] += n.any() and not declined.any()
        seen["ragged"] += len(set(n[live & (caps > 0)].tolist())) > 1
    assert min(seen.values()) > 0, seen


def tiny_lc(method: str, k_max: int = 6, max_new: int = 40, pair=None):
    pair = pair or make_tiny_pair(eos=())
    m = Method.parse(method + f",k_max={k_max}")
    return pair, loop.LoopConfig(target=pair.target.decoder, draft=pair.draft.decoder, method=m, vocab=pair.vocab,
                                 max_new_tokens=max_new, trace=True)


def run_rounds(pair, lc, prompts, costs, thresholds=None):
    """prefill and round_step one round at a time (host loop), yielding (state before, state after) per round."""
    ids = [list(p) for p in prompts]
    P = engine.bucket(max(map(len, ids)))
    prompt = np.zeros((len(ids), P), np.int32)
    for b, p in enumerate(ids):
        prompt[b, :len(p)] = p
    max_len = P + lc.max_new_tokens + lc.k + 2
    ms = loop.init_method_state(lc.method, len(ids), thresholds)
    prefill = jax.jit(loop.prefill, static_argnums=(2, 5))
    step = jax.jit(loop.round_step, static_argnums=2)
    s = prefill(pair.target.params, pair.draft.params, lc, jnp.asarray(prompt), jnp.asarray([len(p) for p in ids]),
                max_len, ms, jax.random.key(0))
    while bool(loop.running(lc, s)):
        after = step(pair.target.params, pair.draft.params, lc, s, costs)
        yield s, after
        s = after


def test_rounds_replayed_against_the_reference():
    """Each round of the real loop (tiny pair, two rows, pooled state, so the batch decides as one): the proposals,
    the declined token and the draft steps equal the numpy rule's from the state before the round and the entropies
    the draft computed; the state after adds exactly the round's verdicts per signal bin, its tokens and its cost
    (every live row charged the round's longest draft and its verification)."""
    pair, lc = tiny_lc("adasd:stop=cost,js_accept=0,bins=8")
    verify = np.asarray([1.0, 1.3, 1.6, 2.2], np.float32)  # widths (0, 1, 3, 6): steep, so proposals get declined
    costs = CostTable(draft=jnp.float32(0.1), verify=jnp.asarray(verify))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 96, n).tolist() for n in (6, 9)]
    seen = {"declined": 0, "stopped": 0, "rounds": 0}
    for before, after in run_rounds(pair, lc, prompts, costs):
        t = before.method.thresholds
        budget = lc.max_new_tokens - np.asarray(before.metrics.new_tokens) - 1  # no proposal past the budget
        r = int(before.step)
        n, a = np.asarray(after.trace.draft_len[r]), np.asarray(after.trace.accepted[r])
        ent = np.asarray(after.trace.signal[r])  # the top-1 surprisal, at most the entropy
        assert (ent <= np.asarray(after.trace.entropy[r]) + 1e-5).all() and (ent >= 0).all()
        dm = jax.tree.map(lambda x, y: np.asarray(y) - np.asarray(x), before.metrics, after.metrics)
        live = ~np.asarray(before.done)
        want_bins, known_acc = np.zeros(t.bins), np.zeros(t.bins)
        width = max(int(n[b]) for b in range(2) if live[b])
        width = next(w for w in lc.widths if w >= width)
        cost = 0.0
        ref = RefRule(t, 0.1, verify, lc.widths, lc.k, lc.vocab)
        caps = [min(lc.k, int(budget[b])) for b in range(2)]
        rns, rdecs, rsteps_all = ref.batch_round(ent, caps, live)
        for b in np.nonzero(live)[0]:
            rn, rdec, rsteps = rns[b], rdecs[b], rsteps_all[b]
            assert (int(n[b]), bool(dm.declined[b]), int(dm.draft_steps[b])) == (rn, rdec, rsteps), (r, b)
            for i in range(min(int(a[b]) + 1, rn)):
                want_bins[ref_bin(ent[b, i], t.bins, lc.vocab)] += 1
                known_acc[ref_bin(ent[b, i], t.bins, lc.vocab)] += i < a[b]
            dec_bin = None
            if rdec and a[b] == rn:  # the declined token's verdict is counted too
                dec_bin = ref_bin(ent[b, rn], t.bins, lc.vocab)
                want_bins[dec_bin] += 1
            cost += max(rsteps_all[i] for i in range(2) if live[i]) * 0.1 + verify[lc.widths.index(width)]
            seen["declined"] += rdec
            seen["stopped"] += rn > 0 and not rdec
        ta = after.method.thresholds
        np.testing.assert_allclose(np.asarray(ta.bin_n) - np.asarray(t.bin_n), want_bins)
        extra = np.asarray(ta.bin_acc) - np.asarray(t.bin_acc) - known_acc
        assert extra.min() == 0 and extra.sum() <= live.sum()  # at most the declined tokens' acceptances
        np.testing.assert_allclose(float(ta.rate_tokens - t.rate_tokens), dm.new_tokens.sum())
        np.testing.assert_allclose(float(ta.rate_cost - t.rate_cost), cost, rtol=1e-5)
        seen["rounds"] += 1
    assert seen["declined"] > 0 and seen["stopped"] > 0 and seen["rounds"] > 10, seen


def test_free_draft_steps_and_flat_verification_draft_to_k_max():
    """A draft identical to the target (every proposal accepted), draft steps free and every width costing one
    step: each round drafts to K_max, and the last one only up to the token budget."""
    tiny = make_tiny_pair(eos=())
    pair = dataclasses.replace(tiny, draft=tiny.target)
    out = adasd_jax.generate(pair, [[5, 6, 7]], method="adasd:stop=cost,k_max=6", max_new_tokens=MAX_NEW,
                             costs=CostTable(draft=jnp.float32(0.0), verify=jnp.ones(4)), trace=True)
    m, rounds = out.metrics, int(out.metrics["rounds"][0])
    assert rounds == -(-(MAX_NEW - 1) // 7)  # 1 prefill token, then 6 accepted + 1 bonus per round
    np.testing.assert_array_equal(out.trace.draft_len[:rounds, 0], [6] * (rounds - 1) + [(MAX_NEW - 1) % 7 - 1])
    assert int(m["drafted"][0]) == int(m["accepted"][0]) == MAX_NEW - 1 - rounds


def test_draft_steps_costlier_than_their_tokens_propose_nothing(tiny_pair, prompts):
    """Draft steps that cost more than any token they could bring: no round drafts, not even the first step, so
    the method costs what `ar` costs and emits `ar`'s tokens."""
    ar = adasd_jax.generate(tiny_pair, prompts, method="ar", max_new_tokens=MAX_NEW)
    out = adasd_jax.generate(tiny_pair, prompts, method="adasd:stop=cost", max_new_tokens=MAX_NEW, reset_state=True,
                             costs=CostTable.flat(len(loop.verify_widths(16)), draft=2.0))
    assert out.tokens == ar.tokens
    assert out.metrics["drafted"].sum() == 0 and out.metrics["draft_steps"].sum() == 0
    np.testing.assert_array_equal(out.metrics["rounds"], ar.metrics["rounds"])


def test_a_skipped_draft_catches_up_when_drafting_resumes():
    """A state whose running rate is high makes the first rounds skip the draft; as the rate falls toward one
    token per step, drafting pays again and the draft first takes in the tokens it missed. With the target as
    its own draft every proposal must then be accepted: a draft cache out of step would be refused."""
    tiny = make_tiny_pair(eos=())
    pair = dataclasses.replace(tiny, draft=tiny.target)
    m = Method.parse("adasd:stop=cost,js_accept=0,k_max=4")
    half = jnp.zeros(m.bins).at[0].set(9.0)  # nine verdicts seen, four accepted: the pool's mean is (4 + 1) / 10
    state = ThresholdState.init((), m.bins).replace(rate_tokens=jnp.float32(30), rate_cost=jnp.float32(10),
                                                    bin_n=half, bin_acc=half * 4 / 9)
    _, lc = tiny_lc("adasd:stop=cost,js_accept=0", k_max=4, pair=pair)
    costs = CostTable(draft=jnp.float32(0.3), verify=jnp.ones(3))  # drafting pays once R < 0.5 / c_d = 1.67
    rounds = list(run_rounds(pair, lc, [[5, 6, 7]], costs, thresholds=state))
    drafted = [int(np.asarray(after.trace.draft_len[int(before.step)])[0]) for before, after in rounds]
    skipped = drafted.index(next(d for d in drafted if d > 0))
    assert skipped > lc.k + 1  # the lag is longer than one catch-up chunk
    final = rounds[-1][1].metrics
    assert int(final.accepted[0]) == int(final.drafted[0]) > 0
    ar = adasd_jax.generate(pair, [[5, 6, 7]], method="ar", max_new_tokens=lc.max_new_tokens)
    assert np.asarray(rounds[-1][1].out[0, :lc.max_new_tokens]).tolist() == ar.tokens[0]


def test_lossless_variant_equals_ar_and_batch_equals_alone(tiny_pair, prompts):
    costs = CostTable(draft=jnp.float32(0.2), verify=jnp.asarray([1.0, 1.05, 1.1, 1.2, 1.4, 1.6]))
    ar = adasd_jax.generate(tiny_pair, prompts, method="ar", max_new_tokens=MAX_NEW)
    for method in ("adasd:stop=cost,js_accept=0", "adasd:stop=cost,per_row=1"):
        batched = adasd_jax.generate(tiny_pair, prompts, method=method, max_new_tokens=MAX_NEW, reset_state=True,
                                     costs=costs)
        if "js_accept=0" in method:
            assert batched.tokens == ar.tokens
            assert 0 < batched.metrics["accepted"].sum() < batched.metrics["drafted"].sum()
            continue
        for b, p in enumerate(prompts):
            alone = adasd_jax.generate(tiny_pair, [p], method=method, max_new_tokens=MAX_NEW, reset_state=True,
                                       costs=costs)
            assert alone.tokens[0] == batched.tokens[b]
            for k in ("rounds", "drafted", "accepted", "lossy", "draft_steps"):
                assert alone.metrics[k][0] == batched.metrics[k][b], k


def test_a_new_cost_table_compiles_nothing(tiny_pair, prompts, monkeypatch):
    events = []
    monkeypatch.setattr(jax.monitoring, "record_event_duration_secs",
                        lambda name, *a, **k: events.append(name) if name.endswith("backend_compile_duration") else None)
    pair = dataclasses.replace(tiny_pair, compiled={}, states={})
    gen = lambda c_d: adasd_jax.generate(pair, prompts, method="adasd:stop=cost", max_new_tokens=MAX_NEW,
                                         reset_state=True, costs=CostTable.flat(6, draft=c_d))
    first = gen(0.1)
    compiled = len(events)
    second = gen(5.0)
    assert len(events) == compiled, "a new cost table recompiled"
    assert first.metrics["drafted"].sum() > 0 and second.metrics["drafted"].sum() == 0  # and it was read


def test_the_engine_measures_keeps_and_reports_the_table(tiny_pair, prompts, tmp_path, monkeypatch):
    """Measured at first use and kept on the pair for the process; never written to disk, also for models loaded from
    files: a table measured under another load would mislead later processes."""
    monkeypatch.setenv("ADASD_CACHE", str(tmp_path))
    for name in ("target", "draft"):
        (tmp_path / name).write_text("weights")
    files = dataclasses.replace(tiny_pair, target=dataclasses.replace(tiny_pair.target, source=str(tmp_path / "target")),
                                draft=dataclasses.replace(tiny_pair.draft, source=str(tmp_path / "draft")))
    for pair in (tiny_pair, files):
        pair = dataclasses.replace(pair, compiled={}, states={}, cost_tables={})
        out = adasd_jax.generate(pair, prompts, method="adasd:stop=cost", max_new_tokens=8)
        s = out.summary()
        assert s["cost_source"] == "measured" and s["cost_verify"][0] == 1.0 and s["cost_draft"] > 0
        assert (np.diff(s["cost_verify"]) >= 0).all() and len(s["cost_verify"]) == len(loop.verify_widths(16))
        again = adasd_jax.generate(pair, prompts, method="adasd:stop=cost", max_new_tokens=8)
        assert again.costs is out.costs  # kept on the pair: measured once per batch bucket
        sampled = adasd_jax.generate(pair, prompts, method="adasd:stop=cost", max_new_tokens=8, temperature=1.0)
        assert sampled.costs is not out.costs and len(pair.cost_tables) == 2  # sampling: other acceptance work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draft", "target"]  # nothing cached on disk


def test_the_table_is_the_median_of_timings_in_target_steps(tiny_pair, monkeypatch):
    """Widths 0, 1, 3, 7, 15, 16 then the draft step, 3 repeats each: medians over the narrowest verification's, V made
    non-decreasing in the width (a wider verification does the narrower one's work and more)."""
    times = [[2.0, 9.0, 2.2], [2.2, 2.4, 2.0], [3.0, 3.0, 3.0], [2.5, 2.9, 2.8], [4.0, 5.0, 4.4], [6.0, 6.0, 6.0],
             [1.0, 0.8, 0.7]]
    monkeypatch.setattr(engine, "_timings", lambda calls, repeats: times[:len(calls)])
    lc, _ = engine._setup(tiny_pair, [[5, 6]], "adasd:stop=cost", 8, 0.0, 0, 1.0, False, False)
    assert lc.widths == (0, 1, 3, 7, 15, 16)
    table = engine.measure_costs(tiny_pair, lc, 1, 64)
    np.testing.assert_allclose(table.verify, np.array([2.2, 2.2, 3.0, 3.0, 4.4, 6.0]) / 2.2, rtol=1e-6)
    assert float(table.draft) == pytest.approx(0.8 / 2.2)


def test_switch_refusals():
    for bad, match in (("adasd:stop=costs", "stop='costs' is not entropy or cost"),
                       ("sd:stop=cost", "stop applies to adasd, not sd"),
                       ("adasd:stop=cost,propose_declined=1", "does not combine"),
                       ("adasd:bins=1", "bins='1' is not an integer from 2 to 1024"),
                       ("adasd:stop=cost,signal=margin", "signal='margin' is not top1 or entropy"),
                       ("adasd:signal=entropy", "read by the cost-aware stop only: add stop=cost")):
        with pytest.raises(ValueError, match=match):
            Method.parse(bad)
