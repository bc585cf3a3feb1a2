"""Teacher-forced greedy agreement along the target's own greedy output (the bench's `ar` tokens), GSM8K 0-9."""
import json, sys
from pathlib import Path
import jax.numpy as jnp, numpy as np
import models
from adasd_jax import distill

C = Path.home() / ".cache/adasd-jax/converted"
tc, tp, tok = models.load(str(C / "qwen2.5-coder-1.5b-instruct-bfloat16"), "bfloat16")
rows = distill.read_rows("train.jsonl", 0, 10)
recs = {r["problem"]: r for r in json.load(open(sys.argv[2]))["records"]["ar"]}
L = 512
toks, mask = np.zeros((10, L), np.int32), np.zeros((10, L), np.float32)
for i, row in enumerate(rows):
    p = distill.encode_prompt(tok, distill.prompt_of(row), True)
    gen = recs[f"gsm8k/{i}"]["tokens"]
    doc = (p + gen)[:L]
    toks[i, :len(doc)] = doc
    mask[i, len(p) - 1:len(doc) - 1] = 1  # positions predicting the generated tokens
seg = np.zeros((10, L), np.int32)
dt = models.parse_dtype("bfloat16")
out = {}
for name, src, layers in [("whole 0.5B", C / "qwen2.5-coder-0.5b-instruct-bfloat16", None),
                          ("0.5B first 8 layers, distilled", Path(sys.argv[1]), None)]:
    dc, dp, _ = models.load(str(src), "bfloat16")
    agree = distill.make_agreement(dc, tc, dt)
    same = n = 0.0
    for s in range(0, 10, 2):
        a, b = agree(dp, tp, jnp.asarray(toks[s:s+2]), jnp.asarray(mask[s:s+2]), jnp.asarray(seg[s:s+2]))
        same, n = same + float(a), n + float(b)
    out[name] = same / n
    print(name, round(out[name], 4), int(n), flush=True)
print(json.dumps({"positions": int(mask.sum()), "agreement_on_target_greedy_path": out}))
