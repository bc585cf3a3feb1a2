"""Per-position statistics of each draft along the target's own greedy output, in the cost model's format.

Uses the 2026-11-29 `entropy_separation.py` (same positions: GSM8K train 0-9, the `ar` tokens of a bench
results.json, bfloat16) and writes one .npz per draft with `match{i}`, `d{i}`, `e{i}` for problem i, the arrays
that `python -m adasd_jax.bench.cost_model` replays (greedy; no `a`, so no --sampling).

    python teacher_forced_npz.py RESULTS.json OUT_DIR NAME=DRAFT_DIR[:LAYERS] ...
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np

import models

spec = importlib.util.spec_from_file_location(
    "entropy_separation", Path(__file__).parent.parent / "../weak-draft/onpolicy-8-layers-gsm8k-0-9/entropy_separation.py")
es = importlib.util.module_from_spec(spec)
spec.loader.exec_module(es)


def main():
    results, out_dir, drafts = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, tp, tok = models.load(str(es.C / "qwen2.5-coder-1.5b-instruct-bfloat16"), "bfloat16")
    toks, mask = es.target_path(results, tok)
    for item in drafts:
        name, dc, dp = es.load_draft(item)
        arrays = {}
        for i, (h, same, d) in enumerate(es.draft_positions(dc, dp, tc, tp, toks, mask)):
            arrays.update({f"match{i}": same, f"d{i}": d, f"e{i}": h})
        tmp = out_dir / f"{name}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.rename(out_dir / f"{name}.npz")
        agree = np.concatenate([arrays[f"match{i}"] for i in range(es.N)]).mean()
        print(name, f"{sum(len(arrays[f'd{i}']) for i in range(es.N))} positions, agreement {agree:.3f}", flush=True)


if __name__ == "__main__":
    main()
