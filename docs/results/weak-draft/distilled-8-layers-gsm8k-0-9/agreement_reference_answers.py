"""Teacher-forced greedy agreement of drafts with the 1.5B target on GSM8K train rows 0-9 (reference answers)."""
import json, sys
from pathlib import Path
import models
from adasd_jax import distill

C = Path.home() / ".cache/adasd-jax/converted"
tc, tp, tok = models.load(str(C / "qwen2.5-coder-1.5b-instruct-bfloat16"), "bfloat16")
rows = distill.read_rows("train.jsonl", 0, 10)
data = distill.pack([distill.encode_row(tok, r, True) for r in rows], 256)
out = {}
for name, src, layers in [("whole 0.5B", C / "qwen2.5-coder-0.5b-instruct-bfloat16", None),
                          ("0.5B first 8 layers", C / "qwen2.5-coder-0.5b-instruct-bfloat16", 8),
                          ("0.5B first 8 layers, distilled", Path(sys.argv[1]), None)]:
    dc, dp, _ = models.load(str(src), "bfloat16")
    if layers:
        dc, dp = models.first_layers(dc, dp, layers)
    out[name] = distill.teacher_forced_agreement(dc, dp, tc, tp, *data, models.parse_dtype("bfloat16"))
    print(name, round(out[name], 4), flush=True)
print(json.dumps({"positions": int(data[1].sum()), "agreement": out}))
