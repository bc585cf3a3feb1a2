#!/usr/bin/env bash
# Run `adasd bench ...` on every worker of a TPU VM and fetch the results JSON that process 0 writes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

USAGE="--name NAME --zone ZONE [settings] [-- BENCH_ARGUMENTS...]"
ABOUT="Uploads the problems file DATA to every worker (unless the bench arguments name a --data-file already \
there), runs 'adasd bench BENCH_ARGUMENTS... --out-dir tpu-results/RUN_ID' as run.sh does (all workers at once, \
one log per worker), then fetches that directory (results.json, results.md, the plots) from worker 0 ('gcloud \
compute tpus tpu-vm scp --recurse --worker=0') to RESULTS_DIR/RUN_ID/. An interrupted run continues with the same \
--run-id and --resume among the bench arguments. \
Example: bench.sh --name my-tpu --zone us-west4-a -- --methods ar,sd:K=4,adasd --limit 20"
common_options
remote_options
run_options
option --results-dir TPU_RESULTS_DIR tpu-results value "local directory the results arrive in, RESULTS_DIR/RUN_ID/"
option --data TPU_BENCH_DATA "" value "local JSONL problems uploaded to REMOTE_DIR/tpu-data/ and passed as --data-file; none: the workers read the hub's"
parse_args "$@"
require TPU_NAME TPU_ZONE TPU_REMOTE_DIR TPU_VENV TPU_LOGS_DIR TPU_RUN_ID TPU_RESULTS_DIR

args=(${REST[@]+"${REST[@]}"})
if [[ ${args[0]-} == adasd ]]; then args=("${args[@]:1}"); fi
if [[ ${args[0]-} == bench ]]; then args=("${args[@]:1}"); fi
data=$TPU_BENCH_DATA
for arg in ${args[@]+"${args[@]}"}; do
  case $arg in
    --out*) die "$SCRIPT sets --out-dir itself: the results arrive in --results-dir (or TPU_RESULTS_DIR)" ;;
    --data-file|--data-file=*) data="" ;;  # a file already on the workers
  esac
done

if [[ -n $data ]]; then
  [[ -f $data ]] || die "--data: no file '$data' (give --data FILE, or --data '' with a --data-file on the workers)"
  remote_data=tpu-data/$(basename "$data")
  gcloud_tpu tpu-vm scp "$data" "$TPU_NAME:$TPU_REMOTE_DIR/$remote_data" --worker=all
  args+=(--data-file "$remote_data")
fi
remote_out=tpu-results/$TPU_RUN_ID
run_adasd bench ${args[@]+"${args[@]}"} --out-dir "$remote_out"
run mkdir -p "$TPU_RESULTS_DIR"
gcloud_tpu tpu-vm scp "$TPU_NAME:$TPU_REMOTE_DIR/$remote_out" "$TPU_RESULTS_DIR/" --worker=0 --recurse
if [[ $TPU_DRY_RUN != 1 ]]; then echo "results: $TPU_RESULTS_DIR/$TPU_RUN_ID/results.json"; fi
