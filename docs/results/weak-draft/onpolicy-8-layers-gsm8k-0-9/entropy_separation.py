"""Does a draft's entropy separate the tokens the target rejects from those it accepts?

Teacher-forced along the target's own greedy output (the `ar` tokens of a bench results.json) for GSM8K 0-9: at
each generated position, the draft's entropy H(q), whether its greedy token equals the target's, and the JS
distance d(p, q). Prints, per draft: the agreement, the mean entropy of agreeing and disagreeing positions, the
AUC of entropy as a detector of disagreement (0.5: no separation), and what an entropy stop at T_G = the mean
entropy of disagreeing positions (the spec's T_G, teacher-forced) would do: the share of agreeing positions it
declines, and the share of disagreeing positions it still proposes; the same at the midpoint of the agreeing and
disagreeing means (not the spec's rule: an alternative for comparison).

    python entropy_separation.py RESULTS.json OUT.json NAME=DRAFT_DIR[:LAYERS] ...
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import models
from adasd_jax import distill
from adasd_jax.divergence import entropy, js_distance

C = Path.home() / ".cache/adasd-jax/converted"
DT = models.parse_dtype("bfloat16")
N, L = 10, 512


def target_path(results, tok):
    """Token rows (prompt + the target's greedy output) and the mask of positions that predict an output token."""
    rows = distill.read_rows("train.jsonl", 0, N)
    recs = {r["problem"]: r for r in json.loads(Path(results).read_text())["records"]["ar"]}
    toks, mask = np.zeros((N, L), np.int32), np.zeros((N, L), bool)
    for i, row in enumerate(rows):
        p = distill.encode_prompt(tok, distill.prompt_of(row), True)
        doc = (p + recs[f"gsm8k/{i}"]["tokens"])[:L]
        toks[i, :len(doc)] = doc
        mask[i, len(p) - 1:len(doc) - 1] = True
    return toks, mask


def auc(pos, neg):
    """P(a positive's score > a negative's), ties counted half (Mann-Whitney)."""
    s = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(s, kind="stable"), kind="stable").astype(float) + 1
    for v in np.unique(s):  # average ranks of ties
        ranks[s == v] = ranks[s == v].mean()
    return (ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def make_per_position(dc, tc, seg):
    """jitted (draft params, target params, tokens) -> per-position draft entropy, greedy match, JS distance."""

    @jax.jit
    def per_position(dp, tp, t):
        q = distill.logits_of(dp, dc, t, DT, seg)
        p = distill.logits_of(tp, tc, t, DT, seg)
        return (entropy(q), jnp.argmax(q, -1) == jnp.argmax(p, -1),
                js_distance(jax.nn.softmax(p, -1), jax.nn.softmax(q, -1)))

    return per_position


def load_draft(item):
    """NAME=DIR[:LAYERS] -> (name, config, params): the draft, cut to its first LAYERS layers when given."""
    name, src = item.split("=", 1)
    layers = None
    if ":" in src:
        src, layers = src.rsplit(":", 1)
    dc, dp, _ = models.load(src, "bfloat16")
    if layers:
        dc, dp = models.first_layers(dc, dp, int(layers))
    return name, dc, dp


def draft_positions(dc, dp, tc, tp, toks, mask):
    """Per problem, at its masked positions: (draft entropy, greedy match, JS distance), two problems a batch."""
    per_position = make_per_position(dc, tc, jnp.zeros((2, L), jnp.int32))
    out = []
    for s in range(0, N, 2):
        h, same, d = (np.asarray(x) for x in per_position(dp, tp, jnp.asarray(toks[s:s + 2])))
        out += [(h[r][mask[s + r]], same[r][mask[s + r]], d[r][mask[s + r]]) for r in range(2)]
    return out


def main():
    results, out_path, drafts = sys.argv[1], sys.argv[2], sys.argv[3:]
    tc, tp, tok = models.load(str(C / "qwen2.5-coder-1.5b-instruct-bfloat16"), "bfloat16")
    toks, mask = target_path(results, tok)
    report = {"positions": int(mask.sum()), "drafts": {}}
    for item in drafts:
        name, dc, dp = load_draft(item)
        h, same, d = (np.concatenate(x) for x in zip(*draft_positions(dc, dp, tc, tp, toks, mask)))
        t_g = float(h[~same].mean())
        r = {"agreement": float(same.mean()), "entropy_agree": float(h[same].mean()),
             "entropy_disagree": t_g, "auc_entropy_flags_disagreement": float(auc(h[~same], h[same])),
             "t_g_teacher_forced": t_g, "agreeing_declined_at_t_g": float((h[same] > t_g).mean()),
             "disagreeing_proposed_at_t_g": float((h[~same] <= t_g).mean()),
             "js_agree": float(d[same].mean()), "js_disagree": float(d[~same].mean())}
        mid = (float(h[same].mean()) + t_g) / 2  # an alternative rule, T_V's midpoint applied to entropies
        r.update(midpoint=mid, agreeing_declined_at_midpoint=float((h[same] > mid).mean()),
                 disagreeing_proposed_at_midpoint=float((h[~same] <= mid).mean()))
        report["drafts"][name] = r
        print(name, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    Path(out_path).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
