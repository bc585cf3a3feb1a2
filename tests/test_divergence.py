"""Entropy, JS distance and sampling transforms against plain references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from adasd_jax.divergence import Sampling, entropy, js_distance, transform


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
