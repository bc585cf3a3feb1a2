"""Tokens/call spread over independent sampled trajectories: S copies of each prompt as per_row rows."""
import json, sys, time
import numpy as np
import adasd_jax
from adasd_jax import engine
from adasd_jax.bench import datasets

S, out_path, methods = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
probs = datasets.load("gsm8k", "/work/shared/data/gsm8k/train.jsonl", limit=10, offset=0)
pair = adasd_jax.load_pair(dtype="bfloat16")
res = {"engine": adasd_jax.__file__, "S": S}
for spec in methods:
    rows = []
    for c, p in enumerate(probs):
        t = time.perf_counter()
        o = engine.generate(pair, [p.prompt] * S, method=spec, max_new_tokens=128, temperature=1.0,
                            chat=p.chat, seed=c)
        m = {k: np.asarray(v).tolist() for k, v in o.metrics.items()}
        rows.append(m)
        tpc = np.array(m["new_tokens"]) / np.array(m["rounds"])
        print(spec, p.id, "tok/call", np.round(tpc, 2), "t_g", np.round(m["t_g"], 3), f"{time.perf_counter()-t:.0f}s", flush=True)
    res[spec] = rows
json.dump(res, open(out_path, "w"))
