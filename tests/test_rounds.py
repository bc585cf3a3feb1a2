"""Every round of a traced generation replayed against full forwards of both models and a plain reading of each
method's rule. Output equality cannot see a wiring mistake that keeps the output lossless (a draft length that
never adapts, an entropy rule on the wrong side, fsd falling back on strict matches, every round verified at the
widest width, a threshold read a round late); this does."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

import adasd_jax
from adasd_jax import models
from adasd_jax import Method, policies
from adasd_jax.loop import verify_widths

MAX_NEW = 56  # with the six rows below, long enough for AdaSD's JS rule to accept a mismatch
TOL = 1e-5  # float32 engine against float64 replay, at a rule's boundary


def full_dists(model, prompt: list[int], out: list[int]) -> np.ndarray:
    """Softmax of one uncached forward over prompt + out, float64: row i predicts out[i] (len(out) + 1 rows)."""
    seq, c = prompt + out, model.config
    logits, _ = models.forward(model.params, c, jnp.asarray([seq]), models.init_cache(c, 1, len(seq)))
    x = np.asarray(logits[0, len(prompt) - 1:], np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else np.nan


def drafts(m: Method, entropy: float, t_g: float, lam: float) -> bool:
    """The entropy rules in plain form: True where the token is proposed (drafting goes on)."""
    if m.name == "adasd":
        return entropy <= t_g + TOL
    if m.name == "adaedl":
        return 1.0 - np.sqrt(policies.EDL_GAMMA * entropy) >= lam - TOL
    return True


@pytest.mark.parametrize("method", ["adasd", "adasd:t_g_rule=midpoint,k_max=6", "adaedl", "dynamic:k_max=8",
                                    "fsd:tau=0.1,K=5"])
def test_every_round_follows_its_rule(tiny_pair, prompts, method):
    m, prompts = Method.parse(method), prompts * 2
    out = adasd_jax.generate(tiny_pair, prompts, method=m, max_new_tokens=MAX_NEW, trace=True, reset_state=True)
    tr, rounds, B = out.trace, out.metrics["rounds"], len(prompts)
    P = [full_dists(tiny_pair.target, p, t) for p, t in zip(prompts, out.tokens)]
    Q = [full_dists(tiny_pair.draft, p, t) for p, t in zip(prompts, out.tokens)]
    widths = verify_widths(m.cap)
    start = np.ones(B, int)  # tokens emitted before the round (the prefill's first)
    k_dyn = np.full(B, min(policies.DYNAMIC_K0, m.k_max))
    lam, rate = np.full(B, policies.EDL_LAMBDA0), np.full(B, policies.EDL_RATE0)
    stats = {"A": [], "R": [], "E": [], "EA": []}  # AdaSD's pooled statistics: distances and entropies by strict verdict
    replayable = True  # while every verified position so far lies inside its row's output
    seen = {"widths": set(), "stopped": 0, "full": 0, "rejected": 0, "lossy": 0, "strict_refused": 0, "up": 0,
            "down": 0}
    for r in range(int(rounds.max())):
        live = np.flatnonzero(r < rounds)
        n_r, a_r = tr.draft_len[r], tr.accepted[r]
        w = min(x for x in widths if x >= n_r[live].max())  # the smallest static width that holds the longest draft
        seen["widths"].add(w)
        if m.name == "adasd" and replayable:  # the thresholds in force: the spec's formulas over all rounds before
            t_g = mean(stats["E"]) if stats["E"] else np.inf
            if m.t_g_rule == "midpoint":
                t_g = (mean(stats["EA"]) + t_g) / 2 if stats["EA"] and stats["E"] else np.inf
            t_v = (mean(stats["A"]) + mean(stats["R"])) / 2 if stats["A"] and stats["R"] else 0.0
            np.testing.assert_allclose(tr.t_g[r, live], t_g, rtol=1e-5)
            np.testing.assert_allclose(tr.t_v[r, live], t_v, rtol=1e-5, atol=1e-7)
        new = {"A": [], "R": [], "E": [], "EA": []}
        for b in live:
            n, a, s0, toks = int(n_r[b]), int(a_r[b]), start[b], out.tokens[b]
            ent, js, t_g, t_v = tr.entropy[r, b], tr.js[r, b], tr.t_g[r, b], tr.t_v[r, b]
            # the divergences were taken over the verified width's w + 1 positions, no more
            assert (ent[:w + 1] > 0).all() and (ent[w + 1:] == 0).all() and (js[w + 1:] == 0).all()
            cap = int(k_dyn[b]) if m.name == "dynamic" else m.cap
            cap = min(cap, MAX_NEW - s0 - 1)  # no proposal past the token budget
            assert all(drafts(m, ent[j], t_g, lam[b]) for j in range(n)), (r, b)  # every proposal passed the rule
            assert n == cap or (n < cap and not drafts(m, ent[n], t_g, lam[b])), (r, b)  # a short draft was stopped
            seen["stopped" if n < cap else "full"] += 1
            # positions 0..a (accepted, then the rejected or bonus one) against the full forwards
            c = min(a, len(toks) - s0)
            if c < a:
                replayable = False
            p, q = P[b][s0:s0 + c + 1], Q[b][s0:s0 + c + 1]
            v = c if a == n == cap else c + 1  # a draft that filled its cap never computed the slot after it
            np.testing.assert_allclose(ent[:v], -(q[:v] * np.log(q[:v])).sum(-1), atol=1e-4)
            np.testing.assert_allclose(js[:v], [jensenshannon(x, y, base=2) for x, y in zip(p[:v], q[:v])], atol=1e-4)
            strict = q.argmax(-1) == p.argmax(-1)  # greedy: the draft proposes its argmax
            # the final verdicts: fsd's JS rule alone; AdaSD's strict match or JS below T_V; strict otherwise
            ok = [js[j] <= m.tau if m.name == "fsd" else strict[j] or (m.name == "adasd" and js[j] < t_v)
                  for j in range(c + 1)]
            assert all(ok[:a])
            for j in range(min(a, len(toks) - s0)):  # accepted proposals are emitted as drafted
                assert toks[s0 + j] == q[j].argmax()
            if s0 + a < len(toks):  # after them the target's own token: the correction or the bonus
                assert toks[s0 + a] == p[a].argmax()
            if a < n and a <= c:
                assert not ok[a]
                seen["rejected"] += 1
                seen["strict_refused"] += bool(strict[a])
            seen["lossy"] += sum(not strict[j] for j in range(min(a, c + 1)))
            if m.name == "adasd" and replayable:
                counted = list(range(min(a, n - 1) + 1)) if n else []
                if n < cap and a == n and m.count_declined:
                    counted.append(n)  # the declined token's verdict counts too
                for j in counted:
                    new["A" if strict[j] else "R"].append(js[j])
                    new["EA" if strict[j] else "E"].append(ent[j])
            if m.name == "dynamic":
                seen["up" if a == n else "down"] += 1
                k_dyn[b] = np.clip(k_dyn[b] + (policies.DYNAMIC_UP if a == n else -policies.DYNAMIC_DOWN), 1, m.k_max)
            if m.name == "adaedl" and n > 0:
                rate[b] = policies.EDL_RATE_EMA * rate[b] + (1 - policies.EDL_RATE_EMA) * a / n
                raw = lam[b] + (policies.EDL_STEP if rate[b] < policies.EDL_TARGET else -policies.EDL_STEP)
                lam[b] = np.clip(policies.EDL_LAMBDA_EMA * lam[b] + (1 - policies.EDL_LAMBDA_EMA) * raw, 0.0, 1.0)
            start[b] += a + 1
        for k in stats:
            stats[k] += new[k]
    # each rule had something to decide
    assert seen["rejected"] > 0 and seen["full"] + seen["stopped"] > 0
    if m.name in ("adasd", "adaedl"):
        assert seen["stopped"] > 0 and len(seen["widths"]) > 1  # short rounds verified at a narrow width
    if method == "adasd":
        assert seen["lossy"] > 0 and int(out.metrics["lossy"].sum()) >= seen["lossy"]
    if m.name == "dynamic":
        assert seen["up"] > 0 and seen["down"] > 0
    if m.name == "fsd":
        assert seen["strict_refused"] > 0  # a strict match refused by the JS rule: fsd has no strict fallback
