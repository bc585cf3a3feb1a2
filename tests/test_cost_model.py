"""The cost model behind estimate_vs_engine.md: round accounting, the threshold rules, the declined step."""
from __future__ import annotations

import math

import numpy as np
import pytest

from adasd_jax.bench import cost_model as cm

C = cm.Costs(draft_ms=10.0, verify_ms=100.0, verify_ms_per_token=2.0)


def seq(match, d, e):
    return {"match": np.asarray(match, bool), "d": np.asarray(d, np.float32), "e": np.asarray(e, np.float32),
            "a": np.where(np.asarray(match, bool), 0.9, 0.1).astype(np.float32)}


def test_sd_rounds_emit_k_plus_one_when_every_proposal_matches():
    r = cm.replay([seq([1] * 50, [0.0] * 50, [0.1] * 50)], "sd", C, k=4)
    assert (r.tokens, r.rounds, r.proposals, r.draft_steps) == (50, 10, 40, 40)
    assert r.seconds == pytest.approx((40 * 10.0 + 10 * 100.0 + 40 * 2.0) / 1e3)


def test_adasd_thresholds_and_the_declined_step_are_charged():
    first = seq([1, 1, 0], [0.1, 0.3, 0.8], [0.2, 0.4, 1.5])
    r = cm.replay([first], "adasd", C)
    # one round: T_G = +inf drafts all three; the third is rejected (T_V was 0), so 2 accepted + the target's token
    assert (r.tokens, r.rounds, r.draft_steps) == (3, 1, 3)
    assert r.t_g == pytest.approx(1.5) and r.t_v == pytest.approx(((0.1 + 0.3) / 2 + 0.8) / 2)
    # carried into a second problem: entropy 2.0 > T_G = 1.5 stops the draft after one proposal; that check ran a
    # draft step, which is charged, and with count_declined the declined token's verdict (a match) is counted
    second = seq([1, 1, 1], [0.05, 0.2, 0.1], [0.1, 2.0, 0.1])
    r2 = cm.replay([first, second], "adasd", C)
    assert r2.rounds == 3 and r2.draft_steps == r2.proposals + 1
    assert r2.t_v == pytest.approx(((0.1 + 0.3 + 0.05 + 0.2 + 0.1) / 5 + 0.8) / 2)  # last round: position 2
    literal = cm.replay([first, second], "adasd", C, count_declined=False)
    assert literal.t_v == pytest.approx(((0.1 + 0.3 + 0.05 + 0.1) / 4 + 0.8) / 2)
    assert math.isinf(cm.replay([seq([1] * 5, [0.0] * 5, [0.1] * 5)], "adasd", C).t_g)  # no rejection yet


def test_cheaper_drafts_favour_longer_drafts():
    rng = np.random.default_rng(0)
    seqs = [seq(rng.random(200) < 0.9, rng.random(200) * 0.5, rng.random(200) * 2) for _ in range(3)]
    cheap, dear = cm.Costs(1.0, 100.0), cm.Costs(60.0, 100.0)
    assert cm.best_k(0.9, cheap) > cm.best_k(0.9, dear)
    assert cm.replay(seqs, "sd", cheap, k=8).tokens_per_s > cm.replay(seqs, "sd", cheap, k=2).tokens_per_s
    assert cm.replay(seqs, "sd", dear, k=8).tokens_per_s < cm.replay(seqs, "sd", dear, k=2).tokens_per_s


def test_load_reads_the_teacher_forced_format_and_rejects_others(tmp_path):
    s = seq([1, 0], [0.1, 0.2], [0.3, 0.4])
    np.savez(tmp_path / "ok.npz", **{f"{k}{i}": v for i in range(2) for k, v in s.items()})
    loaded = cm.load(str(tmp_path / "ok.npz"))
    assert len(loaded) == 2 and np.array_equal(loaded[1]["match"], s["match"])
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="has no d0, e0, match0 arrays"):
        cm.load(str(tmp_path / "bad.npz"))


def test_propose_declined_verifies_the_stopping_token_without_another_draft_step():
    first = seq([1, 1, 0], [0.1, 0.3, 0.8], [0.2, 0.4, 1.5])  # leaves T_G = 1.5, as above
    second = seq([1, 1, 1], [0.05, 0.2, 0.1], [0.1, 2.0, 0.1])  # entropy 2.0 stops drafting at its second token
    spec = cm.replay([first, second], "adasd", C)
    pd = cm.replay([first, second], "adasd", C, propose_declined=True)
    assert (spec.rounds, spec.proposals, spec.draft_steps) == (3, 5, 6)  # the declined token's step: paid, unused
    # round 2 proposes the declined token too; both match, so one round fewer and no step without a proposal
    assert (pd.rounds, pd.proposals, pd.draft_steps, pd.tokens) == (2, 5, 5, 6)


def test_verification_by_rows_charges_the_engine_width():
    c = cm.Costs(10.0, 100.0, verify_rows=((1, 1.0), (16, 1.2), (17, 2.0)))
    assert c.verify(16, 16) == pytest.approx(200.0)  # 16 proposals: 17 rows
    assert c.verify(15, 16) == pytest.approx(120.0) and c.verify(9, 16) == pytest.approx(120.0)  # width 15
    assert c.verify(3, 16) == pytest.approx(100.0 * (1 + 0.2 * 3 / 15))  # 4 rows, interpolated
    r = cm.replay([seq([1] * 17, [0.0] * 17, [0.1] * 17)], "sd", c, k=16)
    assert (r.tokens, r.rounds) == (17, 1) and r.seconds == pytest.approx((16 * 10.0 + 200.0) / 1e3)
    with pytest.raises(ValueError, match="verify-rows covers 1..17 rows"):
        c.verify(20, 31)
    assert cm.rows_table("cpu") == cm.CPU_ROWS and cm.rows_table("1:1,17:2.5") == ((1, 1.0), (17, 2.5))


def test_midpoint_rule_and_fixed_generation_threshold():
    first = seq([1, 1, 0], [0.1, 0.3, 0.8], [0.2, 0.4, 1.5])
    assert cm.replay([first], "adasd", C, t_g_rule="midpoint").t_g == pytest.approx(((0.2 + 0.4) / 2 + 1.5) / 2)
    assert math.isinf(cm.replay([seq([0] * 3, [0.9] * 3, [1.0] * 3)], "adasd", C, t_g_rule="midpoint",
                                js_accept=False).t_g)  # no accepted token yet: no midpoint
    # entropy 1.0 is above the midpoint 0.9 but below the mean 1.5: only the midpoint rule stops there
    second = seq([1, 1, 1], [0.05, 0.2, 0.1], [0.1, 1.0, 0.1])
    spec, mid = cm.replay([first, second], "adasd", C), cm.replay([first, second], "adasd", C, t_g_rule="midpoint")
    assert (spec.rounds, spec.proposals, spec.draft_steps) == (2, 6, 6)  # the second problem in one round of 3
    assert (mid.rounds, mid.proposals, mid.draft_steps) == (3, 5, 6)  # 1 + the declined step, then 1
    # a fixed T_G of 0 declines every token: one target call and one wasted draft step per emitted token
    r = cm.replay([second], "adasd", C, t_g=0.0)
    assert (r.tokens, r.rounds, r.proposals, r.draft_steps, r.t_g) == (3, 3, 0, 3, 0.0)
    # a fixed T_G above every entropy, strict verdicts only: sd with K = k_max
    long = [seq([1, 0, 1, 1] * 10, [0.2] * 40, [0.5] * 40)]
    a, b = cm.replay(long, "adasd", C, t_g=math.inf, js_accept=False, k_max=4), cm.replay(long, "sd", C, k=4)
    assert (a.tokens, a.rounds, a.draft_steps, a.seconds) == (b.tokens, b.rounds, b.draft_steps, b.seconds)


def test_the_cost_aware_replay_bins_the_signal_on_the_grid_it_is_given():
    # the draft is sure (top-1 0.99) of every token the target accepts and less sure (0.3) of every one it rejects:
    # 32 bins tell them apart and stop at the unsure ones; 2 bins (edges at log(V)/4) put both in the first
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(4):
        ok = rng.random(300) < 0.8
        s = seq(ok, np.zeros(300), np.ones(300))
        seqs.append(dict(s, t=np.where(ok, 0.99, 0.3).astype(np.float32)))
    c = cm.Costs(draft_ms=30.0, verify_ms=100.0, verify_rows=cm.CPU_ROWS)
    one, grid = (cm.replay(seqs, "adasd:stop=cost", c, bins=b) for b in (2, 32))
    assert grid.draft_steps < one.draft_steps and grid.tokens_per_s > one.tokens_per_s
    assert {n for n, *_ in cm.POLICIES} >= {"adasd:stop=cost,bins=16", "adasd:stop=cost,bins=64"}
    # before its first verdict the online model trusts the draft and drafts K_max through unsure tokens; the curve
    # known up front stops at the first one
    sure = np.arange(30) % 3 != 2
    short = [dict(seq(sure, np.zeros(30), np.ones(30)), t=np.where(sure, 0.99, 0.05))]
    online, known = (cm.replay(short, "adasd:stop=cost", c, known_curve=k) for k in (False, True))
    assert known.draft_steps < online.draft_steps - 10
