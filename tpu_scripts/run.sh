#!/usr/bin/env bash
# Run an `adasd ...` command on every worker of a TPU VM.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

USAGE="--name NAME --zone ZONE [settings] -- ADASD_ARGUMENTS..."
ABOUT="Runs 'adasd ADASD_ARGUMENTS...' on every worker at once ('gcloud compute tpus tpu-vm ssh --worker=all'), \
as multi-host JAX needs, in the checkout and environment that setup.sh installed, with JAX_PLATFORMS=tpu, \
ADASD_DISTRIBUTED=1 (one JAX cluster over the workers), PYTHONUNBUFFERED=1, a persistent compilation cache and \
any --env settings. Each worker's output goes to LOGS_DIR/RUN_ID/WORKER.log; worker 0's is printed at the end. \
Example: \
run.sh --name my-tpu --zone us-west4-a -- generate --mesh data=1,model=8 'What is 17 * 23?'"
common_options
remote_options
run_options
parse_args "$@"
require TPU_NAME TPU_ZONE TPU_REMOTE_DIR TPU_VENV TPU_LOGS_DIR TPU_RUN_ID

args=(${REST[@]+"${REST[@]}"})
if [[ ${args[0]-} == adasd ]]; then args=("${args[@]:1}"); fi
((${#args[@]})) || die "give adasd's arguments after --, e.g. $SCRIPT --name my-tpu --zone us-west4-a -- generate 'Hello'"
run_adasd "${args[@]}"
