"""Entropy, JS distance and sampling transforms against plain references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare
from scipy.stats import entropy as scipy_entropy

from adasd_jax.divergence import Sampling, argmax, choose, entropy, js_distance, sample, transform


@pytest.mark.parametrize("p, q", [
    ([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]),  # disjoint: distance 1
    ([0.2, 0.3, 0.5, 0.0], [0.2, 0.3, 0.5, 0.0]),  # equal: 0
    ([0.7, 0.0, 0.3, 0.0], [0.1, 0.6, 0.0, 0.3]),  # zeros on both sides
    ([1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),
])
def test_js_distance_matches_scipy_with_zeros(p, q):
    got = float(js_distance(jnp.asarray(p), jnp.asarray(q)))
    assert got == pytest.approx(jensenshannon(p, q, base=2), abs=1e-6)


def test_js_distance_random_full_vocab():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 1000)) * 3
    p, q = jax.nn.softmax(jnp.asarray(logits[0])), jax.nn.softmax(jnp.asarray(logits[1]))
    want = [jensenshannon(np.asarray(p[i], np.float64), np.asarray(q[i], np.float64), base=2) for i in range(5)]
    np.testing.assert_allclose(js_distance(p, q), want, atol=2e-5)


def test_entropy_nats_with_zero_probabilities():
    logits = jnp.asarray([[0.0, 0.0, -jnp.inf, -jnp.inf], [1.0, 2.0, 3.0, 4.0]])
    want = [np.log(2), scipy_entropy(np.exp([1, 2, 3, 4]) / np.exp([1, 2, 3, 4]).sum())]
    np.testing.assert_allclose(entropy(logits), want, atol=1e-6)


def test_transform_top_k_top_p_temperature():
    logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1]))
    p = np.exp(np.asarray(transform(logits, Sampling(1.0, top_k=2))))
    np.testing.assert_allclose(p, [0.4 / 0.7, 0.3 / 0.7, 0, 0], atol=1e-6)
    p = np.exp(np.asarray(transform(logits, Sampling(1.0, top_p=0.75))))  # smallest set with mass >= 0.75
    np.testing.assert_allclose(p, [0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9, 0], atol=1e-6)
    p = np.exp(np.asarray(transform(logits, Sampling(0.5))))
    want = np.asarray([0.4, 0.3, 0.2, 0.1]) ** 2
    np.testing.assert_allclose(p, want / want.sum(), atol=1e-6)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_settings(kw):
    with pytest.raises(ValueError):
        Sampling(**kw)


def test_argmax_is_the_first_maximum_like_jnp_argmax():
    x = jax.random.randint(jax.random.key(0), (64, 300), 0, 5).astype(jnp.float32)  # many ties
    x = x.at[3].set(-jnp.inf).at[4, 7].set(jnp.inf)
    np.testing.assert_array_equal(argmax(x), jnp.argmax(x, -1))
    np.testing.assert_array_equal(argmax(x[5]), jnp.argmax(x[5]))
    assert argmax(x).dtype == jnp.int32


@pytest.mark.parametrize("block", [16, 64, 1024])
def test_sample_draws_the_softmax_distribution_and_never_a_zero_mass_token(block):
    V, N = 300, 60_000  # 300 tokens: 19 blocks of 16 (the last one partial), 5 of 64, or one padded block
    logits = 2.0 * jax.random.normal(jax.random.key(1), (V,))
    zero = np.zeros(V, bool)
    zero[[0, 5, 150, V - 2, V - 1]] = True
    zero[32:48] = True  # a whole block of 16 without mass
    logits = jnp.where(zero, -jnp.inf, logits)
    draws = np.asarray(sample(jax.random.key(2), jnp.broadcast_to(logits, (N, V)), block))
    counts = np.bincount(draws, minlength=V)
    assert counts.shape == (V,) and counts[zero].sum() == 0
    p = np.exp(np.asarray(logits, np.float64)[~zero])
    assert chisquare(counts[~zero], N * p / p.sum()).pvalue > 1e-3


def test_choose_samples_the_transformed_distribution_reproducibly():
    logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1]))
    s = Sampling(1.0, top_k=3)
    keys = jax.random.split(jax.random.key(3), 20_000)
    draws = np.asarray(jax.vmap(lambda k: choose(k, logits, s))(keys))
    assert chisquare(np.bincount(draws, minlength=4)[:3], 20_000 * np.array([4, 3, 2]) / 9).pvalue > 1e-3
    assert (draws < 3).all()
    np.testing.assert_array_equal(jax.vmap(lambda k: choose(k, logits, s))(keys), draws)
    assert int(choose(keys[0], logits, Sampling())) == 0


def test_sample_keeps_the_tail_of_a_peaked_full_vocabulary():
    """A confident step over Qwen2.5's 151,936 tokens: 1% of the mass spread over the rest, each under 1e-7.
    The tail must be drawn at its rate. jax.random.categorical's default Gumbel (mode="low") draws about half of it
    (0.0055 of 20,000 draws against 0.0103), which biased every sampled token towards the mode before this sampler."""
    V, top = 151936, 5
    x = np.random.default_rng(0).standard_normal(V).astype(np.float32)
    x[top] = 17.0
    p = np.exp(x - x.max())
    tail = 1.0 - p[top] / p.sum()
    draw = jax.jit(jax.vmap(lambda k: sample(k, jnp.asarray(x))))
    n = 10_000
    hits = sum(int((np.asarray(draw(jax.random.split(jax.random.key(c), 1000))) != top).sum()) for c in range(n // 1000))
    sd = np.sqrt(tail * (1 - tail) / n)
    assert abs(hits / n - tail) < 4 * sd, f"tail drawn {hits / n:.4f}, softmax gives {tail:.4f} (sd {sd:.4f})"
