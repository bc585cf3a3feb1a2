"""adasd-jax: AdaSD (adaptive, hyperparameter-free speculative decoding) and its baselines in one jitted loop."""
from adasd_jax.divergence import Sampling, entropy, js_distance
from adasd_jax.engine import Model, NaNLogitsError, Output, Pair, generate, load_pair
from adasd_jax.policies import METHODS, Method
from adasd_jax.state import ThresholdState

__all__ = ["METHODS", "Method", "Model", "NaNLogitsError", "Output", "Pair", "Sampling", "ThresholdState", "entropy",
           "generate", "js_distance", "load_pair"]
__version__ = "0.1.0"
