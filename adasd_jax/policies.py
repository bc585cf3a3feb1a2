"""Methods as small pure policies plugged into the one loop: when to stop drafting, how to accept,
how to update the method's state. A `Method` is static (hashable) and selects the policy at trace time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax.divergence import entropy
from adasd_jax.method import Method
from adasd_jax.state import CostTable, MethodState, ThresholdState
from adasd_jax.validate import DEFAULT_METHOD, METHODS  # noqa: F401 (DEFAULT_METHOD: part of this module's API)

# Hugging Face assisted generation's heuristic draft length
DYNAMIC_K0, DYNAMIC_UP, DYNAMIC_DOWN = 5, 2, 1
# AdaEDL (arXiv 2410.18351): gamma from the paper; lambda's online update reconstructed (see the spec)
EDL_GAMMA, EDL_LAMBDA0, EDL_RATE0, EDL_TARGET, EDL_STEP, EDL_RATE_EMA, EDL_LAMBDA_EMA = 0.2, 0.5, 0.9, 0.9, 0.01, 0.5, 0.9


def init_state(m: Method, batch: int) -> MethodState:
    return MethodState(
        thresholds=ThresholdState.init((batch,) if m.per_row else (), m.bins),
        draft_len=jnp.full((batch,), min(DYNAMIC_K0, m.k_max), jnp.int32),
        edl_lambda=jnp.full((batch,), EDL_LAMBDA0, jnp.float32),
        edl_rate=jnp.full((batch,), EDL_RATE0, jnp.float32),
    )


def draft_cap(m: Method, s: MethodState) -> jax.Array:
    """Per-row proposal limit this round, i32 [B]."""
    if m.name == "dynamic":
        return s.draft_len
    return jnp.full_like(s.draft_len, m.cap)


def t_g(m: Method, t: ThresholdState) -> jax.Array:
    """The generation threshold in force under the method's rule."""
    return t.t_g_midpoint if m.t_g_rule == "midpoint" else t.t_g


def stop_drafting(m: Method, s: MethodState, ent: jax.Array) -> jax.Array:
    """Entropy rules, bool [B]: True means the token with draft entropy `ent` is not proposed."""
    if m.name == "adasd" and m.entropy_stop:
        return ent > t_g(m, s.thresholds)
    if m.name == "adaedl":
        return 1.0 - jnp.sqrt(EDL_GAMMA * ent) < s.edl_lambda
    return jnp.zeros(ent.shape, bool)


def accept(m: Method, strict: jax.Array, d: jax.Array, t_v: jax.Array) -> jax.Array:
    """Final verdict per position from the strict verdict and the JS distance."""
    if m.name == "fsd":
        return d <= m.tau
    if m.name == "adasd" and m.js_accept:
        return strict | (d < t_v)
    return strict


def residual_on_reject(m: Method) -> bool:
    """Sampling after a rejection: the lossless residual, or (fsd) a plain sample from the target."""
    return m.name != "fsd"


def threshold_contribution(m: Method, verdict: jax.Array, d: jax.Array, ent: jax.Array, sig: jax.Array,
                           counted: jax.Array, emitted: jax.Array, vocab: int) -> ThresholdState:
    """One row's statistics from its verdicts at the `counted` positions (arrays over positions): T_G's and T_V's
    sums by `verdict`, and the acceptance model's counts per bin of the draft signal `sig` by `emitted` (the round's
    own verdict)."""
    good, bad = counted & verdict, counted & ~verdict
    f = lambda x, w: jnp.sum(jnp.where(w, x, 0.0))
    n = lambda w: w.sum().astype(jnp.int32)
    onehot = jax.nn.one_hot(signal_bin(sig, m.bins, vocab), m.bins) * counted[:, None]
    return ThresholdState(acc_n=n(good), acc_sum=f(d, good), acc_ent_sum=f(ent, good),
                          rej_n=n(bad), rej_sum=f(d, bad), rej_ent_sum=f(ent, bad),
                          bin_n=onehot.sum(0), bin_acc=(onehot * emitted[:, None]).sum(0),
                          rate_tokens=jnp.float32(0), rate_cost=jnp.float32(0))


def add_contributions(m: Method, t: ThresholdState, rows: ThresholdState, live: jax.Array) -> ThresholdState:
    """Fold per-row contributions [B] into the state: summed over rows when pooled (order-free)."""
    rows = jax.tree.map(lambda x: jnp.where(live.reshape(live.shape + (1,) * (x.ndim - 1)), x, 0), rows)
    if not m.per_row:
        rows = jax.tree.map(lambda x: x.sum(0), rows)
    return t + rows


def update(m: Method, s: MethodState, contrib: ThresholdState, proposed: jax.Array, accepted: jax.Array,
           live: jax.Array) -> MethodState:
    """After a round: fold statistics (adasd), adapt K (dynamic) or lambda (adaedl). Rows not `live` keep theirs."""
    if m.name == "adasd":  # contrib carries the round's tokens and cost too (the running rate R)
        s = s.replace(thresholds=add_contributions(m, s.thresholds, contrib, live))
    if m.name == "dynamic":
        k = jnp.where(accepted == proposed, s.draft_len + DYNAMIC_UP, s.draft_len - DYNAMIC_DOWN)
        s = s.replace(draft_len=jnp.where(live, jnp.clip(k, 1, m.k_max), s.draft_len))
    if m.name == "adaedl":
        seen = live & (proposed > 0)
        rate = EDL_RATE_EMA * s.edl_rate + (1 - EDL_RATE_EMA) * accepted / jnp.maximum(proposed, 1)
        raw = jnp.where(rate < EDL_TARGET, s.edl_lambda + EDL_STEP, s.edl_lambda - EDL_STEP)
        lam = jnp.clip(EDL_LAMBDA_EMA * s.edl_lambda + (1 - EDL_LAMBDA_EMA) * raw, 0.0, 1.0)
        s = s.replace(edl_rate=jnp.where(seen, rate, s.edl_rate), edl_lambda=jnp.where(seen, lam, s.edl_lambda))
    return s


# ---------------------------------------------------------------- the cost-aware stop (stop="cost"; not the paper)
# Dinkelbach's rule for the most tokens per unit of cost over rounds: draft and propose while the expected extra
# tokens beat what their cost would earn at the rate R already achieved. Costs come from the measured table; the
# acceptance a(h) is learned online per bin of the draft signal h (its top-1 surprisal by default) and forced
# non-increasing in h. Nothing here is set by hand.

def draft_signal(m: Method, logits: jax.Array) -> jax.Array:
    """What the acceptance model reads of a draft distribution, in nats over the last axis: the top-1 surprisal
    -log max q (signal="top1"; how sure the draft is of the token it proposes, which predicts the verdict better
    than the entropy on the built-in pair, docs/algorithm.md) or the entropy H(q) (signal="entropy")."""
    if m.signal == "top1":
        logits = logits.astype(jnp.float32)
        return jax.nn.logsumexp(logits, axis=-1) - jnp.max(logits, axis=-1)
    return entropy(logits)


def signal_bin(h: jax.Array, bins: int, vocab: int) -> jax.Array:
    """Bin of a draft signal h (nats, in [0, log V]) on a grid dense near 0, where most tokens sit: edges
    log(V) (i / N)^2."""
    h_max = float(np.log(max(vocab, 2)))
    return jnp.clip(jnp.floor(bins * jnp.sqrt(jnp.clip(h, 0.0, h_max) / h_max)), 0, bins - 1).astype(jnp.int32)


def min_max_fit(mean: jax.Array) -> jax.Array:
    """The weighted least-squares fit non-increasing in the index (what pooling adjacent violators gives), from
    mean[j, k], the weighted mean of bins j..k (k >= j), by the min-max formula
    f_i = min_{j<=i} max_{k>=i} mean[j, k]: exact, and O(N^2) for a few dozen bins."""
    n = mean.shape[0]
    j, k = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    upper = jnp.where(k >= j, mean, -jnp.inf)
    best_k = jax.lax.cummax(upper[:, ::-1], axis=1)[:, ::-1]  # [j, i]: max over k >= i of mean[j, k]
    return jnp.min(jnp.where(j <= k, best_k, jnp.inf), axis=0)  # [i]: min over j <= i


def acceptance(t: ThresholdState) -> tuple[jax.Array, jax.Array]:
    """One state's acceptance model: (a per signal bin [N], the pooled mean abar []).

    abar starts from one accepted pseudo-verdict (optimistic: a draft never tried is tried, so that the model
    learns; a uniform prior's 0.5 kept a 0.5B draft costing 0.45 of a step from ever drafting). The bins share one
    more pseudo-verdict at abar, 1/N each, and are fit non-increasing in the signal with their counts as weights:
    close to the maximum-likelihood monotone curve once a bin has a verdict (a whole pseudo-verdict per bin pulled
    the sparse high-signal bins up to the optimistic pool mean and kept long drafts going), abar where none has."""
    abar = (t.bin_acc.sum() + 1.0) / (t.bin_n.sum() + 1.0)
    return fit_counts(t.bin_acc, t.bin_n, abar), abar


def fit_counts(acc: jax.Array, n: jax.Array, prior: jax.Array) -> jax.Array:
    """min_max_fit of acc / n per bin [N], each bin holding 1/N pseudo-verdict at `prior`. Range sums come from
    cumulative counts, which are whole numbers and so exact in f32 (a cumulative sum of the pseudo-weights would
    lose them next to thousands of verdicts)."""
    N = n.shape[-1]
    c = lambda x: jnp.concatenate([jnp.zeros(1), jnp.cumsum(x)])
    ca, cn = c(acc), c(n)
    j, k = jnp.arange(N)[:, None], jnp.arange(N)[None, :]
    size = (k - j + 1).astype(jnp.float32) / N  # pseudo-verdicts in bins j..k
    return min_max_fit((ca[None, 1:] - ca[:-1, None] + size * prior) / (cn[None, 1:] - cn[:-1, None] + size))


def rate(t: ThresholdState, costs: CostTable) -> jax.Array:
    """R: tokens per unit of cost achieved so far, starting from one autoregressive step's (1 token for V(0))."""
    return (t.rate_tokens + 1.0) / (t.rate_cost + costs.verify[0])


def verify_cost(costs: CostTable, widths: tuple[int, ...], cap: int) -> jax.Array:
    """V(k) for k = 0..cap proposals, f32 [cap+1]: the cost of the smallest static width that holds k."""
    index = np.searchsorted(np.asarray(widths), np.arange(cap + 1))
    return costs.verify[jnp.asarray(index)]


def lookahead_gain(survival, k, cap, abar, r, c_d, v):
    """Best net gain of drafting and proposing m >= 1 more tokens after k proposals with survival S:
    max_m S (abar + .. + abar^m) - R (m c_d + V(k+m) - V(k)) over k + m <= cap; -inf when none fits."""
    m = jnp.arange(1, v.shape[0])
    tokens = survival * jnp.cumsum(abar ** m.astype(jnp.float32))
    cost = r * (m * c_d + v[jnp.minimum(k + m, v.shape[0] - 1)] - v[k])
    return jnp.max(jnp.where(k + m <= cap, tokens - cost, -jnp.inf))


def start_drafting(t: ThresholdState, costs: CostTable, v: jax.Array, cap) -> jax.Array:
    """Before the round's first draft step (one row's state): does any draft length pay at the pool's mean?"""
    _, abar = acceptance(t)
    return lookahead_gain(1.0, 0, cap, abar, rate(t, costs), costs.draft, v) > 0


def batch_lookahead_gain(survival, k, room, abar, r, c_d, v, share):
    """The pooled batch's lookahead_gain: one draft step per m serves every row and the verification is as wide as
    the longest draft, so the rows' expected extra tokens (row b adds at most room[b] more, survival [B] 0 for rows
    not drafting), averaged over the `share` = 1 / live rows that split the round's cost, are set against one round's
    extra cost. With one row it is lookahead_gain."""
    K = v.shape[0] - 1
    m = jnp.arange(1, K + 1)
    geo = jnp.concatenate([jnp.zeros(1), jnp.cumsum(abar ** m.astype(jnp.float32))])  # [K+1]: abar + .. + abar^m
    tokens = share * (survival[:, None] * geo[jnp.minimum(m[None, :], room[:, None])]).sum(0)
    cost = r * (m * c_d + v[jnp.minimum(k + m, K)] - v[k])
    return jnp.max(jnp.where(m <= room.max(), tokens - cost, -jnp.inf))


def batch_start_drafting(t: ThresholdState, costs: CostTable, v: jax.Array, cap, want, share) -> jax.Array:
    """start_drafting for a pooled batch: does any draft length pay for the rows that want to draft, per live row?"""
    _, abar = acceptance(t)
    return batch_lookahead_gain(want.astype(jnp.float32), 0, jnp.where(want, cap, 0), abar, rate(t, costs),
                                costs.draft, v, share) > 0


def batch_cost_step(model, costs: CostTable, v: jax.Array, cap, m: Method, vocab: int, survival, h, k, want, share):
    """cost_step for a pooled batch at slot k: every drafting row proposes x_k when their expected tokens per live
    row beat the wider verification (once it runs, a row's proposal costs nothing more), and the batch drafts on
    while a continuation pays for it as a whole. Returns (propose [B], draft on [], survival [B])."""
    a_bins, abar, r = model
    s_k = jnp.where(want, survival * a_bins[signal_bin(h, m.bins, vocab)], 0.0)
    ahead = batch_lookahead_gain(s_k, k, jnp.where(want, cap - k, 0), abar, r, costs.draft, v, share)
    propose = share * s_k.sum() - r * (v[k] - v[k - 1]) + jnp.maximum(ahead, 0.0) > 0
    return want & propose, propose & (ahead > 0), s_k


def cost_model(t: ThresholdState, costs: CostTable) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What a round's decisions read from one state: (a per bin, abar, R); fixed for the round, so fit once."""
    return (*acceptance(t), rate(t, costs))


def cost_step(model, costs: CostTable, v: jax.Array, cap, m: Method, vocab: int, survival, h, k):
    """After the draft computed q_k (k >= 1, draft signal h) with earlier proposals surviving with probability S:
    (propose x_k, draft one more step, the survival S a(h) of x_k). `model` is `cost_model`'s. Proposing counts the
    wider verification against x_k's expected token plus the best continuation's gain; drafting on needs a
    continuation that pays."""
    a_bins, abar, r = model
    s_k = survival * a_bins[signal_bin(h, m.bins, vocab)]
    ahead = lookahead_gain(s_k, k, cap, abar, r, costs.draft, v)
    propose = s_k - r * (v[k] - v[k - 1]) + jnp.maximum(ahead, 0.0) > 0
    return propose, propose & (ahead > 0), s_k
