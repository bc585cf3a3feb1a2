"""AdaSD's threshold arithmetic against a plain-numpy reading of the spec, round by round."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from adasd_jax import models
from adasd_jax import Method, policies
from adasd_jax.loop import LoopConfig, accept_row
from adasd_jax.state import ThresholdState

K, V = 6, 40


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_round(p_logits, q_logits, props, n, declined, t_v, stats_on, count_declined):
    """Spec steps 2-4 for one row, greedy: returns (accepted prefix, emitted, A, R, E, EA); EA, the accepted
    tokens' entropies, feeds only the midpoint T_G (not the spec)."""
    p, q = softmax(p_logits.astype(np.float64)), softmax(q_logits.astype(np.float64))
    d = [jensenshannon(p[i], q[i], base=2) for i in range(K + 1)]
    H = [-(q[i] * np.log(q[i])).sum() for i in range(K + 1)]
    A, R, E, EA = [], [], [], []

    def record(i, strict, final):
        good = strict if stats_on == "strict" else final
        (A if good else R).append(d[i])
        (EA if good else E).append(H[i])

    a = n
    for i in range(n):
        strict = props[i] == p[i].argmax()
        final = strict or d[i] < t_v
        record(i, strict, final)
        if not final:
            a = i
            break
    if declined and count_declined and a == n:
        x = q[n].argmax()
        strict = x == p[n].argmax()
        record(n, strict, strict or d[n] < t_v)
    emitted = list(props[:a]) + [int(p[a].argmax())]
    return a, emitted, A, R, E, EA


def random_round(rng):
    p_logits = rng.normal(size=(K + 1, V)) * 3
    q_logits = p_logits + rng.normal(size=(K + 1, V)) * rng.choice([0.3, 1.0, 3.0])
    props = q_logits[:K].argmax(-1)
    n = int(rng.integers(0, K + 1))
    declined = bool(rng.random() < 0.5) and n < K
    return p_logits.astype(np.float32), q_logits.astype(np.float32), props.astype(np.int32), n, declined


@pytest.mark.parametrize("stats_on,count_declined,t_g_rule", [
    ("strict", True, "mean"), ("strict", False, "mean"), ("final", True, "mean"), ("final", False, "mean"),
    ("strict", True, "midpoint"), ("final", False, "midpoint")])
def test_round_statistics_match_reference(stats_on, count_declined, t_g_rule):
    m = Method("adasd", k_max=K, stats_on=stats_on, count_declined=count_declined, t_g_rule=t_g_rule)
    c = models.Config(model_type="llama", vocab_size=V, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=8, intermediate_size=8)
    lc = LoopConfig(target=models.Decoder(c), draft=models.Decoder(c), method=m, vocab=V)
    row = jax.jit(functools.partial(accept_row, lc))
    rng = np.random.default_rng(0)
    state = ThresholdState.init()
    sums = dict(A=[], R=[], E=[], EA=[])
    seen_lossy = seen_reject = 0
    for _ in range(60):
        p_l, q_l, props, n, declined = random_round(rng)
        t_v = float(np.asarray(state.t_v))
        emitted, a, contrib, info = row(p_l, q_l, props, n, declined, t_v, jax.random.key(0))
        ra, remitted, A, R, E, EA = reference_round(p_l, q_l, props, n, declined, t_v, stats_on, count_declined)
        assert int(a) == ra
        assert list(np.asarray(emitted)[: ra + 1]) == remitted
        np.testing.assert_allclose([contrib.acc_sum, contrib.rej_sum, contrib.rej_ent_sum, contrib.acc_ent_sum],
                                   [sum(A), sum(R), sum(E), sum(EA)], atol=1e-4)
        assert (int(contrib.acc_n), int(contrib.rej_n)) == (len(A), len(R))
        state = policies.add_contributions(m, state, jax.tree.map(lambda x: x[None], contrib), jnp.ones((1,), bool))
        for k, v in {"A": A, "R": R, "E": E, "EA": EA}.items():
            sums[k] += v
        seen_lossy += int(info["lossy"])
        seen_reject += ra < n
        # thresholds after the round: exactly the spec's formulas over everything seen so far
        want_tg = np.mean(sums["E"]) if sums["E"] else np.inf
        if t_g_rule == "midpoint":
            want_tg = (np.mean(sums["EA"]) + want_tg) / 2 if sums["EA"] and sums["E"] else np.inf
        want_tv = (np.mean(sums["A"]) + np.mean(sums["R"])) / 2 if sums["A"] and sums["R"] else 0.0
        np.testing.assert_allclose(float(policies.t_g(m, state)), want_tg, rtol=1e-5)
        np.testing.assert_allclose(float(state.t_v), want_tv, rtol=1e-5, atol=1e-7)
    assert seen_lossy > 0 and seen_reject > 0  # both lossy acceptance and rejection were exercised


@pytest.mark.parametrize("stats_on,count_declined", [("strict", True), ("final", True), ("strict", False)])
def test_sampled_round_statistics_match_reference(stats_on, count_declined):
    """The same at temperature 0.7: the strict verdict is u < min(1, p'(x) / q'(x)) with the tempered
    distributions, while JS distances and entropies stay those of the untempered ones. The reference draws the
    row's uniforms and the declined token from the row's key as the loop does; everything else is plain numpy."""
    from adasd_jax.divergence import Sampling, choose

    T = 0.7
    m = Method("adasd", k_max=K, stats_on=stats_on, count_declined=count_declined)
    c = models.Config(model_type="llama", vocab_size=V, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=8, intermediate_size=8)
    s = Sampling(temperature=T)
    lc = LoopConfig(target=models.Decoder(c), draft=models.Decoder(c), method=m, vocab=V, sampling=s)
    row = jax.jit(functools.partial(accept_row, lc))
    rng = np.random.default_rng(2)
    sums = {"A": [], "R": [], "E": []}
    state, seen = ThresholdState.init(), {"strict_miss": 0, "lossy": 0, "declined": 0}
    for r in range(80):
        p_l, q_l, _, n, declined = random_round(rng)
        q_t = softmax(q_l.astype(np.float64) / T)
        props = np.array([rng.choice(V, p=q_t[i]) for i in range(K)], np.int32)  # drafted from q'
        key = jax.random.key(r)
        t_v = float(np.asarray(state.t_v))
        _, a, contrib, info = row(p_l, q_l, props, n, declined, t_v, key)
        k_u, _, k_dec, k_du = jax.random.split(key, 4)
        u = np.asarray(jax.random.uniform(k_u, (K,)))
        p, q = softmax(p_l.astype(np.float64)), softmax(q_l.astype(np.float64))
        pt, qt = softmax(p_l.astype(np.float64) / T), softmax(q_l.astype(np.float64) / T)
        d = [jensenshannon(p[i], q[i], base=2) for i in range(K + 1)]
        H = [-(q[i] * np.log(q[i])).sum() for i in range(K + 1)]
        A, R, E = [], [], []

        def record(i, strict, final, A=A, R=R, E=E, d=d, H=H):
            good = strict if stats_on == "strict" else final
            (A if good else R).append(d[i])
            if not good:
                E.append(H[i])

        ra, lossy = n, 0
        for i in range(n):
            strict = u[i] < min(1.0, pt[i, props[i]] / qt[i, props[i]])
            final = strict or d[i] < t_v
            record(i, strict, final)
            seen["strict_miss"] += not strict
            lossy += final and not strict
            if not final:
                ra = i
                break
        if declined and count_declined and ra == n:
            x = int(choose(k_dec, jnp.asarray(q_l[n]), s))
            strict = float(jax.random.uniform(k_du)) < min(1.0, pt[n, x] / qt[n, x])
            record(n, strict, strict or d[n] < t_v)
            seen["declined"] += 1
        assert int(a) == ra and int(info["lossy"]) == lossy
        seen["lossy"] += lossy
        np.testing.assert_allclose([contrib.acc_sum, contrib.rej_sum, contrib.rej_ent_sum], [sum(A), sum(R), sum(E)],
                                   atol=1e-4)
        assert (int(contrib.acc_n), int(contrib.rej_n)) == (len(A), len(R))
        state = policies.add_contributions(m, state, jax.tree.map(lambda x: x[None], contrib), jnp.ones((1,), bool))
        for k, v in {"A": A, "R": R, "E": E}.items():
            sums[k] += v
        np.testing.assert_allclose(float(state.t_g), np.mean(sums["E"]) if sums["E"] else np.inf, rtol=1e-5)
    assert seen["strict_miss"] > 0 and seen["lossy"] > 0 and (seen["declined"] > 0) == count_declined


def test_pooled_statistics_are_the_sum_of_rows():
    rng = np.random.default_rng(1)
    rows = ThresholdState(acc_sum=jnp.asarray(rng.random(4), jnp.float32), acc_n=jnp.asarray([1, 2, 0, 3]),
                          rej_sum=jnp.asarray(rng.random(4), jnp.float32), rej_n=jnp.asarray([0, 1, 1, 2]),
                          rej_ent_sum=jnp.asarray(rng.random(4), jnp.float32),
                          acc_ent_sum=jnp.asarray(rng.random(4), jnp.float32),
                          bin_n=jnp.asarray(rng.integers(0, 5, (4, 3)), jnp.float32),
                          bin_acc=jnp.asarray(rng.integers(0, 2, (4, 3)), jnp.float32),
                          rate_tokens=jnp.asarray(rng.random(4), jnp.float32),
                          rate_cost=jnp.asarray(rng.random(4), jnp.float32))
    live = jnp.asarray([True, True, False, True])
    pooled = policies.add_contributions(Method("adasd"), ThresholdState.init((), 3), rows, live)
    per_row = policies.add_contributions(Method("adasd", per_row=True), ThresholdState.init((4,), 3), rows, live)
    for p, r, x in zip(jax.tree.leaves(pooled), jax.tree.leaves(per_row), jax.tree.leaves(rows)):
        kept = np.where(np.asarray(live).reshape((4,) + (1,) * (x.ndim - 1)), x, 0)
        np.testing.assert_allclose(p, kept.sum(0), rtol=1e-6)
        np.testing.assert_allclose(r, kept, rtol=1e-6)


def test_empty_state_thresholds():
    s = ThresholdState.init()
    assert float(s.t_g) == np.inf and float(s.t_v) == 0.0
    s = s.replace(acc_sum=jnp.float32(0.2), acc_n=jnp.int32(2))
    assert float(s.t_v) == 0.0  # rejected set still empty: lossy acceptance stays off
    assert float(s.t_g_midpoint) == np.inf  # the midpoint T_G needs a rejection too
    s = s.replace(acc_ent_sum=jnp.float32(0.4), rej_ent_sum=jnp.float32(3.0), rej_n=jnp.int32(2))
    assert float(s.t_g) == 1.5 and float(s.t_g_midpoint) == pytest.approx((0.2 + 1.5) / 2)
    assert float(ThresholdState.init().replace(rej_ent_sum=jnp.float32(3.0), rej_n=jnp.int32(2)).t_g_midpoint) == np.inf


def test_adaedl_and_dynamic_updates():
    m = Method("dynamic", k_max=8)
    s = policies.init_state(m, 3)
    s = policies.update(m, s, None, jnp.asarray([5, 5, 5]), jnp.asarray([5, 2, 0]), jnp.asarray([True, True, False]))
    assert list(np.asarray(s.draft_len)) == [7, 4, 5]
    s = policies.update(m, s.replace(draft_len=jnp.asarray([7, 1, 5])), None, jnp.asarray([7, 1, 5]),
                        jnp.asarray([7, 0, 5]), jnp.asarray([True, True, True]))
    assert list(np.asarray(s.draft_len)) == [8, 1, 7]  # 1 <= K <= K_max
    m = Method("adaedl")
    s = policies.init_state(m, 2)
    s = policies.update(m, s, None, jnp.asarray([4, 4]), jnp.asarray([0, 4]), jnp.asarray([True, True]))
    rate = 0.5 * 0.9 + 0.5 * np.asarray([0.0, 1.0])
    lam = np.clip(0.9 * 0.5 + 0.1 * np.where(rate < 0.9, 0.51, 0.49), 0, 1)
    np.testing.assert_allclose(s.edl_rate, rate, rtol=1e-6)
    np.testing.assert_allclose(s.edl_lambda, lam, rtol=1e-6)
