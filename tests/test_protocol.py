"""Bring your own model: the decoder protocol, its cache contract, user pairs, and no `models` name collision."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import adasd_jax

REPO = Path(adasd_jax.__file__).resolve().parent.parent


def test_import_works_beside_a_research_repositorys_own_models_package(tmp_path):
    """A research repository with its own `models` package (first on sys.path, as the working directory is) keeps
    it, and adasd_jax still finds its reference decoders (as adasd_jax.models) and generates."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("WHOSE = 'the research repository'\n")
    (tmp_path / "models" / "config.py").write_text("raise ImportError('the research repository config')\n")
    code = """
import jax, models
import adasd_jax
from adasd_jax import engine, models as ref
assert models.WHOSE == 'the research repository', models.__file__
assert ref.__name__ == 'adasd_jax.models' and ref.Config.__module__ == 'adasd_jax.models.config'
c = ref.Config(model_type='llama', vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
               head_dim=8, intermediate_size=32, max_position_embeddings=64)
pair = engine.Pair(target=engine.Model(c, ref.init_params(c, jax.random.key(0)), 't'), draft=None, tokenizer=None,
                   vocab=32)
print(len(adasd_jax.generate(pair, [[1, 2, 3]], method='ar', max_new_tokens=3).tokens[0]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "3"
