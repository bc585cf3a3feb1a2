"""adasd-jax: AdaSD (adaptive, hyperparameter-free speculative decoding) and its baselines in one jitted loop.

The public names load on first use, so `adasd --help` and other light entry points do not import JAX.
"""
import importlib

_EXPORTS = {
    "Sampling": "adasd_jax.divergence", "entropy": "adasd_jax.divergence", "js_distance": "adasd_jax.divergence",
    "Model": "adasd_jax.engine", "NaNLogitsError": "adasd_jax.engine", "Output": "adasd_jax.engine",
    "Pair": "adasd_jax.engine", "generate": "adasd_jax.engine", "load_pair": "adasd_jax.engine",
    "METHODS": "adasd_jax.policies", "Method": "adasd_jax.policies", "ThresholdState": "adasd_jax.state",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adasd_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
