#!/usr/bin/env bash
# Create a Cloud TPU VM, or a queued resource that creates one when capacity frees up.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

USAGE="--name NAME --zone ZONE [settings] [-- extra gcloud flags]"
ABOUT="Creates the TPU VM with 'gcloud compute tpus tpu-vm create', or with --queued a queued resource \
('gcloud compute tpus queued-resources create'; watch it with 'gcloud compute tpus queued-resources describe'). \
Arguments after -- are passed to gcloud as they are (e.g. --network, --labels)."
common_options
option --accelerator TPU_ACCELERATOR v5litepod-8 value "accelerator type (v5litepod-8: one v5e host; v4-32: four v4 hosts)"
option --version TPU_VERSION "" value "runtime version (default: auto: v2-alpha-tpuv5-lite for v5litepod, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for v4/v3/v2)"
option --queued TPU_QUEUED 0 switch "create a queued resource instead of the VM directly"
option --queued-id TPU_QUEUED_ID "" value "queued resource id (default: the --name)"
option --spot TPU_SPOT 0 switch "spot capacity (cheaper, can be reclaimed at any time)"
option --preemptible TPU_PREEMPTIBLE 0 switch "preemptible capacity (TPU VM only; queued resources take --spot)"
parse_args "$@"
require TPU_NAME TPU_ZONE TPU_ACCELERATOR

# runtime_version ACCELERATOR: the TPU software image that fits that accelerator family.
runtime_version() {
  case $1 in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime version for accelerator '$1': give --version (or TPU_VERSION)" ;;
  esac
}

version=${TPU_VERSION:-$(runtime_version "$TPU_ACCELERATOR")}
if [[ $TPU_SPOT == 1 && $TPU_PREEMPTIBLE == 1 ]]; then die "--spot and --preemptible exclude each other: pick one"; fi
capacity=()
if [[ $TPU_SPOT == 1 ]]; then capacity=(--spot); fi

if [[ $TPU_QUEUED == 1 ]]; then
  if [[ $TPU_PREEMPTIBLE == 1 ]]; then die "queued resources have no --preemptible: use --spot"; fi
  gcloud_tpu queued-resources create "${TPU_QUEUED_ID:-$TPU_NAME}" --node-id="$TPU_NAME" \
    --accelerator-type="$TPU_ACCELERATOR" --runtime-version="$version" \
    ${capacity[@]+"${capacity[@]}"} ${REST[@]+"${REST[@]}"}
else
  if [[ $TPU_PREEMPTIBLE == 1 ]]; then capacity=(--preemptible); fi
  gcloud_tpu tpu-vm create "$TPU_NAME" --accelerator-type="$TPU_ACCELERATOR" --version="$version" \
    ${capacity[@]+"${capacity[@]}"} ${REST[@]+"${REST[@]}"}
fi
