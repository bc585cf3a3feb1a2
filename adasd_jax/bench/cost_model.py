"""Predicted speed of each drafting policy from teacher-forced statistics and step costs.

    python -m adasd_jax.bench.cost_model tf10.npz --draft-ms 80 --verify-ms 157 --verify-ms-per-token 3
    python -m adasd_jax.bench.cost_model tf10.npz --verify-ms 157 --verify-ms-per-token 3 --scan 10,20,40,60,80

Reads an .npz of teacher-forced statistics (`python -m adasd_jax.bench.teacher_forced` writes one from a bench
run), arrays `match{i}`, `d{i}`, `e{i}` and optionally `a{i}` for problem i
(per generated position of the target's own continuation: `match` whether the draft's argmax is the target's, `d`
the JS distance, `e` the draft's entropy, `a` the acceptance probability at temperature 1) and replays fixed-K `sd` and `adasd` (the spec's
thresholds, `count_declined` on or off) over it. A round costs

    draft_ms x draft steps + verify_ms + verify_ms_per_token x proposals,

where a round that the entropy check stopped also paid the draft step whose entropy it checked (an estimate that
leaves that step out flatters AdaSD by about one draft step per round).
With `--verify-rows`, a verification instead costs verify_ms times the measured multiple for the rows the engine
runs (its static width + 1, see loop.verify_widths), so the tile boundaries of a CPU's GEMM (17 rows cost 2.2x one
row where 16 cost 1.2x) are charged.
`adasd+cap` is a proposal, not an engine method: AdaSD with its draft length also capped at the K that
maximises expected tokens per millisecond under a geometric acceptance model fitted online.

`--scan` prints AdaSD over the best fixed K as the draft step's cost varies: the draft/target cost ratio
decides whether the spec's ">= 1.05x the best fixed K" target is reachable on a machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np

from adasd_jax.loop import verify_widths

K_MAX = 16
# One target forward of T rows against one row, real weights, 2-core CPU (measured 2026-11-27). The engine runs
# 17 rows as 32 on CPU since 35f541e: 1.73x, against 2.13-2.16x unpadded.
CPU_ROWS = ((1, 1.0), (2, 1.03), (4, 1.06), (5, 1.09), (8, 1.14), (9, 1.51), (16, 1.24), (17, 1.73))


@dataclasses.dataclass(frozen=True)
class Costs:
    draft_ms: float  # one draft forward (one token) with its entropy and bookkeeping
    verify_ms: float  # one target forward of a single token
    verify_ms_per_token: float = 0.0  # extra per verified proposal
    verify_rows: tuple[tuple[int, float], ...] = ()  # (rows, x one row) of a verification; replaces the line above

    def verify(self, proposals: int, cap: int) -> float:
        """ms of the verification of a round's proposals when the draft buffer holds `cap`."""
        if not self.verify_rows:
            return self.verify_ms + self.verify_ms_per_token * proposals
        rows = min(w for w in verify_widths(cap) if w >= proposals) + 1
        xs, ys = zip(*sorted(self.verify_rows))
        if not xs[0] <= rows <= xs[-1]:
            raise ValueError(f"--verify-rows covers {xs[0]}..{xs[-1]} rows; a round here verifies {rows}")
        return self.verify_ms * float(np.interp(rows, xs, ys))


@dataclasses.dataclass(frozen=True)
class Replay:
    tokens: int  # emitted (accepted proposals + the target's own token per round)
    rounds: int
    proposals: int
    draft_steps: int  # proposals + the declined tokens' steps
    lossy: int
    seconds: float
    t_g: float = math.inf  # AdaSD thresholds at the end
    t_v: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def load(path: str) -> list[dict[str, np.ndarray]]:
    """The per-problem arrays of a teacher-forced statistics .npz, in problem order."""
    z = np.load(path)
    n = len([k for k in z.files if k.startswith("d") and k[1:].isdigit()])
    if n == 0:
        raise ValueError(f"{path} has no d0, e0, match0 arrays: the cost model reads d{{i}}, e{{i}}, match{{i}} "
                         "(and a{i} to sample) for each problem i")
    return [{key: z[f"{key}{i}"] for key in ("match", "d", "e", "a", "t") if f"{key}{i}" in z.files} for i in range(n)]


def best_k(alpha: float, c: Costs) -> int:
    """Draft length maximising expected emitted tokens per ms when each proposal is accepted with prob alpha."""
    def rate(k):
        expected = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
        return expected / (k * c.draft_ms + c.verify_ms + k * c.verify_ms_per_token)
    return max(range(1, K_MAX + 1), key=rate)


def thresholds(acc_d, rej_d, rej_e, acc_e=(0.0, 0), t_g_rule: str = "mean") -> tuple[float, float]:
    """(T_G, T_V) from [sum, count] pairs. T_G: the mean rejected entropy (the spec), or with `t_g_rule="midpoint"`
    the midpoint of the mean accepted and mean rejected entropies (T_V's rule applied to entropies); +inf before any
    rejection (midpoint: until both exist). T_V: the midpoint of the mean accepted and rejected JS distances, 0
    until both exist."""
    if t_g_rule == "midpoint":
        t_g = (acc_e[0] / acc_e[1] + rej_e[0] / rej_e[1]) / 2 if acc_e[1] and rej_e[1] else math.inf
    else:
        t_g = rej_e[0] / rej_e[1] if rej_e[1] else math.inf
    t_v = (acc_d[0] / acc_d[1] + rej_d[0] / rej_d[1]) / 2 if acc_d[1] and rej_d[1] else 0.0
    return t_g, t_v


def replay(seqs: list[dict], policy: str, c: Costs, k: int = 4, count_declined: bool = True,
           sampling: bool = False, seed: int = 0, k_max: int = K_MAX, propose_declined: bool = False,
           t_g_rule: str = "mean", t_g: float | None = None, js_accept: bool = True,
           signal: str | None = None, bins: int = 32, known_curve: bool = False) -> Replay:
    """One policy over every problem in order, the AdaSD threshold state carried across problems (pooled sums).
    `propose_declined`: the token the entropy check stopped at is proposed too (its draft step is paid anyway).
    `t_g_rule`: see `thresholds`. `t_g`: a fixed generation threshold instead of the adaptive one (a sweep of it
    bounds what any constant entropy stop can do). `js_accept=False`: strict verdicts only (lossless). `signal`: the
    cost-aware stop's (replay_cost_aware), `bins` its grid, `known_curve` its bound."""
    if policy in ("adasd:stop=cost", "oracle"):
        return replay_cost_aware(seqs, c, k_max, sampling, seed, oracle=policy == "oracle", signal=signal, bins=bins,
                                 known_curve=known_curve)
    rng = np.random.default_rng(seed)
    adaptive = policy in ("adasd", "adasd+cap")
    acc_d, rej_d, rej_e, acc_e = [0.0, 0], [0.0, 0], [0.0, 0], [0.0, 0]  # sums, counts: JS and entropy by verdict
    strict_seen = [0, 0]
    tokens = rounds = proposals = steps = lossy = 0
    seconds = 0.0

    def in_force() -> tuple[float, float]:  # (T_G, T_V) under the switches: a fixed T_G, T_V off
        t_g_now, t_v = thresholds(acc_d, rej_d, rej_e, acc_e, t_g_rule)
        return (t_g_now if t_g is None else t_g), (t_v if js_accept else 0.0)

    def record(j, strict, s):
        (acc_d if strict else rej_d)[0] += s["d"][j]
        (acc_d if strict else rej_d)[1] += 1
        (acc_e if strict else rej_e)[0] += s["e"][j]
        (acc_e if strict else rej_e)[1] += 1

    for s in seqs:
        n, t = len(s["d"]), 0
        verdicts = (rng.random(n) < s["a"]) if sampling else s["match"].astype(bool)
        while t < n:
            t_g_now, t_v = in_force()
            cap = buffer = k if policy == "sd" else k_max  # buffer: the static draft buffer the widths come from
            if policy == "adasd+cap":
                cap = best_k((strict_seen[0] + 1) / (strict_seen[1] + 2), c)
            proposed, declined = 0, None
            while proposed < cap and t + proposed < n:
                if adaptive and s["e"][t + proposed] > t_g_now:
                    declined = t + proposed
                    break
                proposed += 1
            round_steps = proposed + (declined is not None)
            if propose_declined and declined is not None:
                proposed, declined = proposed + 1, None  # a proposal like any other from here on
            accepted, rejected = 0, False
            for j in range(t, t + proposed):
                strict = bool(verdicts[j])
                strict_seen[0] += strict
                strict_seen[1] += 1
                if adaptive:
                    record(j, strict, s)
                if not (strict or (adaptive and s["d"][j] < t_v)):
                    rejected = True
                    break
                lossy += not strict
                accepted += 1
            if adaptive and count_declined and declined is not None and not rejected:
                record(declined, bool(verdicts[declined]), s)
            seconds += (round_steps * c.draft_ms + c.verify(proposed, buffer)) / 1e3
            tokens += accepted + 1
            rounds += 1
            proposals += proposed
            steps += round_steps
            t += accepted + 1
    return Replay(tokens, rounds, proposals, steps, lossy, seconds, *in_force())


def replay_cost_aware(seqs: list[dict], c: Costs, k_max: int = K_MAX, sampling: bool = False, seed: int = 0,
                      oracle: bool = False, bins: int = 32, vocab: int = 151936, signal: str | None = None,
                      known_curve: bool = False) -> Replay:
    """The cost-aware stop (adasd:stop=cost, strict verdicts) replayed with the engine's own rule functions over the
    positions, the state carried across problems; or, with `oracle`, the bound of a rule that knows where each
    round's first rejection falls and drafts the count that maximises that round's tokens per unit of cost.
    `signal`: what the model bins, "top1" (-log of the draft's top-1 probability, arrays t{i}) or "entropy" (e{i});
    by default top1 where the statistics hold it. `known_curve`: the acceptance model's counts are those of every
    position of the run, fixed from the first round (a bound for any online fit of a(h): it knows the curve before
    seeing a verdict, though of every position, not only of those reached with all earlier proposals accepted)."""
    import jax
    import jax.numpy as jnp

    from adasd_jax import policies
    from adasd_jax.state import CostTable, ThresholdState

    rng = np.random.default_rng(seed)
    unit = c.verify(0, k_max)
    v = np.asarray([c.verify(k, k_max) / unit for k in range(k_max + 1)], np.float32)
    widths = verify_widths(k_max)
    costs = CostTable(draft=jnp.float32(c.draft_ms / unit), verify=jnp.asarray([v[w] for w in widths]))
    vk = policies.verify_cost(costs, widths, k_max)
    signal = signal or ("top1" if all("t" in s for s in seqs) else "entropy")
    m = policies.Method("adasd", k_max=k_max, stop="cost", bins=bins, js_accept=False, signal=signal)
    feature = lambda s: s["e"] if signal == "entropy" else -np.log(np.clip(s["t"], 1e-30, 1.0))
    start = jax.jit(lambda t: policies.start_drafting(t, costs, vk, k_max))
    step = jax.jit(lambda t, surv, h, k: policies.cost_step(policies.cost_model(t, costs), costs, vk, k_max, m, vocab,
                                                            surv, h, k))
    binned = jax.jit(lambda h: policies.signal_bin(h, bins, vocab))
    oks = [(rng.random(len(s["d"])) < s["a"]) if sampling else s["match"].astype(bool) for s in seqs]
    t = ThresholdState.init((), bins)
    if known_curve:
        b = np.asarray(binned(jnp.asarray(np.concatenate([feature(s) for s in seqs]), jnp.float32)))
        t = t.replace(bin_n=jnp.asarray(np.bincount(b, minlength=bins), jnp.float32),
                      bin_acc=jnp.asarray(np.bincount(b, weights=np.concatenate(oks), minlength=bins), jnp.float32))
    tokens = rounds = proposals = steps = 0
    seconds = 0.0
    for s, ok in zip(seqs, oks):
        n, i, h = len(s["d"]), 0, feature(s)
        while i < n:
            k, round_steps, declined = 0, 0, None
            if oracle:
                run = next((j for j in range(min(k_max, n - i)) if not ok[i + j]), min(k_max, n - i))
                k = round_steps = max(range(min(k_max, n - i) + 1),
                                      key=lambda q: (min(q, run) + 1) / (q * costs.draft + v[q]))
            elif bool(start(t)):
                surv = jnp.float32(1.0)
                while i + k < n:
                    round_steps += 1
                    propose, go_on, surv = step(t, surv, jnp.float32(h[i + k]), k + 1)
                    if not bool(propose):
                        declined = i + k
                        break
                    k += 1
                    if not bool(go_on) or k == k_max:
                        break
            accepted = next((j for j in range(k) if not ok[i + j]), k)
            seen = list(range(i, i + min(accepted + 1, k))) + ([declined] if declined is not None and accepted == k
                                                               else [])
            b = np.asarray(binned(jnp.asarray([h[j] for j in seen], jnp.float32))) if seen else []
            cost = round_steps * float(costs.draft) + v[k]
            if not known_curve:
                t = t.replace(bin_n=t.bin_n + np.bincount(b, minlength=bins),
                              bin_acc=t.bin_acc + np.bincount(b, weights=[ok[j] for j in seen], minlength=bins))
            t = t.replace(rate_tokens=t.rate_tokens + accepted + 1, rate_cost=t.rate_cost + cost)
            seconds += cost * unit / 1e3
            tokens, rounds, proposals, steps = tokens + accepted + 1, rounds + 1, proposals + k, steps + round_steps
            i += accepted + 1
    return Replay(tokens, rounds, proposals, steps, 0, seconds)


# K = 1 and 3 are outside the targets' {2, 4, 8} but belong in "the best fixed K": with a weak draft K = 1 wins, and
# AdaSD with propose_declined=1 and a low T_G is sd:K=1
POLICIES = [("sd:K=1", "sd", {"k": 1}), ("sd:K=2", "sd", {"k": 2}), ("sd:K=3", "sd", {"k": 3}), ("sd:K=4", "sd", {"k": 4}),
            ("sd:K=8", "sd", {"k": 8}), ("adasd", "adasd", {}),
            ("adasd:count_declined=0", "adasd", {"count_declined": False}), ("adasd+cap (proposal)", "adasd+cap", {}),
            ("adasd:propose_declined=1", "adasd", {"propose_declined": True}),
            ("adasd:k_max=15", "adasd", {"k_max": 15}),
            ("adasd:k_max=15,propose_declined=1", "adasd", {"k_max": 15, "propose_declined": True}),
            ("adasd:k_max=7,propose_declined=1", "adasd", {"k_max": 7, "propose_declined": True}),
            ("adasd:t_g_rule=midpoint", "adasd", {"t_g_rule": "midpoint"}),
            ("adasd:t_g_rule=midpoint,propose_declined=1", "adasd", {"t_g_rule": "midpoint", "propose_declined": True}),
            ("sd:K=6", "sd", {"k": 6}), ("adasd:stop=cost", "adasd:stop=cost", {}),
            ("adasd:stop=cost,signal=entropy", "adasd:stop=cost", {"signal": "entropy"}),
            # the acceptance model's grid is a representation: halved and doubled it should not move the speed
            ("adasd:stop=cost,bins=16", "adasd:stop=cost", {"bins": 16}),
            ("adasd:stop=cost,bins=64", "adasd:stop=cost", {"bins": 64}),
            ("adasd:stop=cost, curve known (bound)", "adasd:stop=cost", {"known_curve": True}),
            ("oracle (knows the first rejection)", "oracle", {})]


def table(seqs, c: Costs, sampling: bool = False) -> dict[str, Replay]:
    return {name: replay(seqs, policy, c, sampling=sampling, **kw) for name, policy, kw in POLICIES}


def best_sd(r: dict[str, Replay]) -> str:
    return max((n for n in r if n.startswith("sd:")), key=lambda n: r[n].tokens_per_s)


def rows_table(text: str) -> tuple[tuple[int, float], ...]:
    if text == "cpu":
        return CPU_ROWS
    try:
        return tuple((int(r), float(x)) for r, x in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'cpu' or ROWS:X pairs like '1:1,2:1.03,17:2.16', got {text!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stats", help=".npz of teacher-forced statistics (match{i}, d{i}, e{i}[, a{i}] per problem i)")
    ap.add_argument("--draft-ms", type=float, default=80.0)
    ap.add_argument("--verify-ms", type=float, default=157.0)
    ap.add_argument("--verify-ms-per-token", type=float, default=3.0)
    ap.add_argument("--verify-rows", type=rows_table, default=(), help="a verification's cost by rows: 'cpu' (the "
                    "measured 2-core CPU table, CPU_ROWS) or 'ROWS:X,..' multiples of --verify-ms; replaces "
                    "--verify-ms-per-token")
    ap.add_argument("--sampling", action="store_true", help="draw verdicts with probability a (temperature 1)")
    ap.add_argument("--scan", help="comma-separated draft-step costs in ms: AdaSD over the best fixed K at each")
    ap.add_argument("--sweep-t-g", help="comma-separated fixed generation thresholds (nats): AdaSD with T_G held at "
                    "each (T_V adaptive as in the spec), over the best fixed K; the best of them bounds what a "
                    "constant entropy stop can do on these positions")
    a = ap.parse_args(argv)
    seqs = load(a.stats)
    if a.scan:
        print("draft ms  draft/target  best sd    adasd x best sd  adasd:count_declined=0  adasd+cap (proposal)")
        for ms in (float(x) for x in a.scan.split(",")):
            r = table(seqs, Costs(ms, a.verify_ms, a.verify_ms_per_token, a.verify_rows), a.sampling)
            best = best_sd(r)
            x = {n: r[n].tokens_per_s / r[best].tokens_per_s for n in r}
            print(f"{ms:8.1f}  {ms / a.verify_ms:12.2f}  {best:9s}  {x['adasd']:15.3f}  "
                  f"{x['adasd:count_declined=0']:22.3f}  {x['adasd+cap (proposal)']:20.3f}")
        return 0
    c = Costs(a.draft_ms, a.verify_ms, a.verify_ms_per_token, a.verify_rows)
    r = table(seqs, c, a.sampling)
    best, ar = best_sd(r), 1e3 / a.verify_ms
    if a.sweep_t_g:
        variants = {"spec": {}, "propose_declined=1": {"propose_declined": True},
                    "k_max=7,propose_declined=1": {"k_max": 7, "propose_declined": True}}
        print(f"AdaSD with T_G fixed, x the best fixed K ({best}); tokens per target call in brackets")
        print("fixed T_G  " + "  ".join(f"{v:>26s}" for v in variants))
        for t_g in (float(x) for x in a.sweep_t_g.split(",")):
            xs = [replay(seqs, "adasd", c, sampling=a.sampling, t_g=t_g, **kw) for kw in variants.values()]
            print(f"{t_g:9.2f}  " + "  ".join(
                f"{x.tokens_per_s / r[best].tokens_per_s:19.3f} ({x.tokens / x.rounds:4.2f})" for x in xs))
        return 0
    print(f"{len(seqs)} problems, {sum(len(s['d']) for s in seqs)} positions; ar {ar:.2f} tok/s (cost model)")
    for n, x in r.items():
        print(f"{n:24s} {x.tokens_per_s:6.2f} tok/s  {x.tokens_per_s / ar:.2f}x ar  "
              f"{x.tokens_per_s / r[best].tokens_per_s:.3f}x {best}  tokens/call {x.tokens / x.rounds:.2f}  "
              f"draft steps/round {x.draft_steps / x.rounds:.2f}  lossy {x.lossy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
