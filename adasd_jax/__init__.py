"""adasd-jax: AdaSD (adaptive, hyperparameter-free speculative decoding) and its baselines in one jitted loop.

The public names load on first use, so `adasd --help` and other light entry points do not import JAX.

The reference decoders live in the repository's top-level `models/` folder and are imported as `adasd_jax.models`,
never as a top-level `models`: a research repository's own `models` package then cannot shadow them. An install maps
the folder to `adasd_jax.models` (pyproject's package-dir); a source tree put on sys.path without installing it finds
the folder beside this package through `_SourceTreeModels`.
"""
import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

_EXPORTS = {
    "Sampling": "adasd_jax.divergence", "entropy": "adasd_jax.divergence", "js_distance": "adasd_jax.divergence",
    "Model": "adasd_jax.loading", "NaNLogitsError": "adasd_jax.engine", "Output": "adasd_jax.engine",
    "Pair": "adasd_jax.loading", "generate": "adasd_jax.engine", "load_pair": "adasd_jax.loading",
    "make_pair": "adasd_jax.loading", "Decoder": "adasd_jax.protocol", "ProtocolError": "adasd_jax.protocol",
    "METHODS": "adasd_jax.validate", "Method": "adasd_jax.method", "ThresholdState": "adasd_jax.state",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


class _SourceTreeModels(importlib.abc.MetaPathFinder):
    """`adasd_jax.models` as the `models/` folder beside this package, for a source tree that is on sys.path but not
    installed with the package-dir mapping. Consulted last: an install's own `adasd_jax.models` wins."""

    name = __name__ + ".models"

    def find_spec(self, fullname, path=None, target=None):
        folder = Path(__file__).resolve().parent.parent / "models"
        if fullname != self.name or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


if not any(type(f).__name__ == "_SourceTreeModels" for f in sys.meta_path):
    sys.meta_path.append(_SourceTreeModels())


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adasd_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
