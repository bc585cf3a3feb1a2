"""How far int8 weights move a model's next-token distribution: teacher-forced KL and top-1 agreement.

    python -m adasd_jax.bench.int8_quality --target DIR --gsm8k-file train.jsonl [--positions 1024] [--chunk 512]

The reference is the model in --dtype (bf16 by default); each int8 kernel (w8a8, w8a16) runs the same model's int8
conversion (--int8-target, else quantized on load) over the same tokens: GSM8K problems (question, then answer)
and HumanEval prompts with their canonical solutions, each corpus joined into chunks of --chunk tokens. Prints per
corpus and kernel the mean per-token KL(reference || int8) in nats, its 99th percentile, and top-1 agreement.
"""
from __future__ import annotations

import argparse
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import models
from adasd_jax.bench import datasets
from adasd_jax.models import quant


def corpus_tokens(tok, texts: list[str], n: int) -> np.ndarray:
    ids: list[int] = []
    for t in texts:
        ids += tok(t + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= n:
            break
    if len(ids) < n:
        raise ValueError(f"the corpus holds only {len(ids)} tokens, {n} asked for")
    return np.asarray(ids[:n], np.int32)


def texts(gsm8k_file: str) -> dict[str, list[str]]:
    gsm = [json.loads(line) for line in open(gsm8k_file) if line.strip()]
    with gzip.open(datasets.humaneval_file(), "rt") as f:
        he = [json.loads(line) for line in f if line.strip()]
    return {"gsm8k": [f"{r['question']}\n{r['answer']}" for r in gsm],
            "humaneval": [r["prompt"] + r["canonical_solution"] for r in he]}


def logits_fn(c: models.Config, chunk: int):
    cache = lambda p: models.init_cache(c, 1, chunk, models.activation_dtype(p))
    return jax.jit(lambda p, t: models.forward(p, c, t, cache(p))[0][0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--int8-target", help="an int8 conversion of --target (default: quantize --target on load)")
    ap.add_argument("--gsm8k-file", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--positions", type=int, default=1024, help="per corpus")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--kernels", default="w8a8,w8a16")
    a = ap.parse_args(argv)
    c, p_ref, tok = models.load(a.target, a.dtype)
    corpora = {k: corpus_tokens(tok, v, a.positions).reshape(-1, a.chunk) for k, v in texts(a.gsm8k_file).items()}
    ref_fn = logits_fn(c, a.chunk)
    refs = {k: [np.asarray(ref_fn(p_ref, jnp.asarray(ch[None]))) for ch in v] for k, v in corpora.items()}
    del p_ref
    qc, p_q, _ = models.load(a.int8_target or a.target, a.dtype, tokenizer=False, quantize="int8")
    print(f"{a.target} ({a.dtype}) vs its int8 conversion, {jax.devices()[0].device_kind}, chunks of {a.chunk}")
    for kernel in a.kernels.split(","):
        quant.KERNEL = kernel
        fn = logits_fn(qc, a.chunk)  # a new function: KERNEL is read when tracing
        for name, chunks in corpora.items():
            kl, agree = [], []
            for ch, ref in zip(chunks, refs[name]):
                got = np.asarray(fn(p_q, jnp.asarray(ch[None])))
                lp, lq = jax.nn.log_softmax(ref, -1), jax.nn.log_softmax(got, -1)
                kl.append(np.asarray(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))
                agree.append(ref.argmax(-1) == got.argmax(-1))
            kl, agree = np.concatenate(kl), np.concatenate(agree)
            print(f"{kernel:6s} {name:10s} positions {kl.size:5d}  KL mean {kl.mean():.4f}  "
                  f"p99 {np.quantile(kl, 0.99):.4f}  top-1 agreement {agree.mean():.4f}", flush=True)


if __name__ == "__main__":
    main()
