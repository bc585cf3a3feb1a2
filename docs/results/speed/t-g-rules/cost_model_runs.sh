#!/usr/bin/env bash
# The cost-model tables of this folder's README, from the .npz files teacher_forced_npz.py writes to $NPZ.
# Step costs: a target step of 199.3 ms (the 2026-11-29 bare step) with the CPU's measured verification-row table;
# a draft step of 86 ms for the whole 0.5B (0.43 of a target step), 72 ms for its first 20 layers (0.36) and
# 43 ms for the 8-layer drafts (measured in 2026-11-29: 307, 351, 393 ms rounds at K = 2, 3, 4).
set -euo pipefail
NPZ=${NPZ:-/tmp/runs/npz}
for x in "whole05b 86 0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,1.0,1.2,1.5,2,100" \
         "l20 72 0.2,0.4,0.6,0.8,1.0,1.5,2,2.5,3,100" \
         "l8_distilled 43 0.5,1,1.5,2,2.5,3,3.5,4,5,100" \
         "l8_onpolicy60 43 0.5,1,1.5,2,2.5,3,3.5,4,5,100" \
         "l8_onpolicy160 43 0.5,1,1.5,2,2.5,3,3.5,4,5,100"; do
  read -r name ms sweep <<<"$x"
  echo "== $name (draft step $ms ms)"
  python -m adasd_jax.bench.cost_model "$NPZ/$name.npz" --draft-ms "$ms" --verify-ms 199.3 --verify-rows cpu
  python -m adasd_jax.bench.cost_model "$NPZ/$name.npz" --draft-ms "$ms" --verify-ms 199.3 --verify-rows cpu --sweep-t-g "$sweep"
done
