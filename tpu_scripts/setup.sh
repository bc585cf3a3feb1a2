#!/usr/bin/env bash
# Install this package and jax[tpu] on every worker of a TPU VM.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

USAGE="--name NAME --zone ZONE [settings]"
ABOUT="Copies this checkout to every worker ('gcloud compute tpus tpu-vm scp --worker=all'; tracked files with \
their uncommitted edits, not untracked files), or with --git-url clones that repository at --git-ref there; \
then, on all workers at once ('gcloud compute tpus tpu-vm ssh --worker=all'), installs PYTHON when missing, \
makes the virtual environment VENV and runs pip install -e 'REMOTE_DIR[tpu]' (this package and jax[tpu]). \
Rerunning replaces REMOTE_DIR and keeps VENV. On a multi-host slice run 'ssh-add ~/.ssh/google_compute_engine' first."
common_options
remote_options
option --git-url TPU_GIT_URL "" value "clone this repository on the workers instead of copying the local checkout"
option --git-ref TPU_GIT_REF main value "branch, tag or commit checked out with --git-url"
option --python TPU_PYTHON python3.11 value "Python (3.11+) for the virtual environment; apt installs it when missing"
option --pip-args TPU_PIP_ARGS "" value "extra pip install arguments, as shell words"
parse_args "$@"
require TPU_NAME TPU_ZONE TPU_REMOTE_DIR TPU_VENV TPU_PYTHON
if ((${#REST[@]})); then die "$SCRIPT takes no arguments after --"; fi

remote_dir=$(home_path "$TPU_REMOTE_DIR")
venv=$(home_path "$TPU_VENV")
python=$(quote "$TPU_PYTHON")

if [[ -z $TPU_GIT_URL ]]; then
  repo=$(cd "$(dirname "$0")/.." && pwd)
  git -C "$repo" rev-parse --git-dir > /dev/null 2>&1 ||
    die "$repo is not a git checkout: give --git-url (or TPU_GIT_URL) to clone the project on the workers"
  # `git stash create` commits the working tree's edits without touching it; it prints nothing when clean.
  snapshot=$(git -C "$repo" stash create)
  untracked=$(git -C "$repo" ls-files --others --exclude-standard | wc -l | tr -d ' ')
  if ((untracked)); then echo "note: $untracked untracked files are not copied (git add them to include them)" >&2; fi
  archive=${TMPDIR:-/tmp}/adasd-jax-src.$$.tar.gz
  trap 'rm -f "$archive"' EXIT
  run git -C "$repo" archive --format=tar.gz --output="$archive" "${snapshot:-HEAD}"
  gcloud_tpu tpu-vm scp "$archive" "$TPU_NAME:adasd-jax-src.tar.gz" --worker=all
  fetch="rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf adasd-jax-src.tar.gz -C $remote_dir && rm adasd-jax-src.tar.gz"
else
  fetch="rm -rf $remote_dir && git clone --quiet $(quote "$TPU_GIT_URL") $remote_dir && git -C $remote_dir checkout --quiet $(quote "$TPU_GIT_REF")"
fi

# One line, for each worker's login shell. tpu-data/ is where bench.sh uploads its problems.
install="set -eu"
install+="; if ! command -v $python > /dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $python $python-venv; fi"
install+="; $fetch && mkdir -p $remote_dir/tpu-data"
install+="; if [ ! -x $venv/bin/python ]; then $python -m venv $venv; fi"
install+="; $venv/bin/pip install -q -U pip"
install+="; $venv/bin/pip install -q -e $remote_dir'[tpu]'${TPU_PIP_ARGS:+ $TPU_PIP_ARGS}"
install+="; $venv/bin/python -c 'import jax, adasd_jax; print(\"adasd-jax installed, jax\", jax.__version__)'"
ssh_all "$install"
