#!/usr/bin/env bash
# Delete a Cloud TPU VM, or a queued resource together with its VM.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

USAGE="--name NAME --zone ZONE [settings] [-- extra gcloud flags]"
ABOUT="Deletes the TPU VM ('gcloud compute tpus tpu-vm delete'), or with --queued the queued resource and \
its VM ('gcloud compute tpus queued-resources delete --force'). gcloud asks for confirmation unless --quiet."
common_options
option --queued TPU_QUEUED 0 switch "delete the queued resource (and its VM) rather than a VM created directly"
option --queued-id TPU_QUEUED_ID "" value "queued resource id (default: the --name)"
option --quiet TPU_QUIET 0 switch "do not ask for confirmation (gcloud --quiet)"
parse_args "$@"
require TPU_NAME TPU_ZONE

quiet=()
if [[ $TPU_QUIET == 1 ]]; then quiet=(--quiet); fi
if [[ $TPU_QUEUED == 1 ]]; then
  gcloud_tpu queued-resources delete "${TPU_QUEUED_ID:-$TPU_NAME}" --force \
    ${quiet[@]+"${quiet[@]}"} ${REST[@]+"${REST[@]}"}
else
  gcloud_tpu tpu-vm delete "$TPU_NAME" ${quiet[@]+"${quiet[@]}"} ${REST[@]+"${REST[@]}"}
fi
