# shellcheck shell=bash
# Sourced by every tpu_scripts/*.sh: settings from flags or environment variables, --help,
# --dry-run, and the gcloud command lines they share. Written for bash 3.2 too (macOS), so no
# associative arrays, and empty arrays are expanded as ${a[@]+"${a[@]}"}.

SCRIPT=$(basename "$0")

OPT_FLAGS=() OPT_VARS=() OPT_DEFAULTS=() OPT_KINDS=() OPT_HELPS=()
REST=()        # the arguments after --
ABOUT=""       # one paragraph for --help, set by the script
USAGE=""       # the synopsis line for --help

die() { echo "error: $*" >&2; exit 2; }

# option FLAG VAR DEFAULT KIND HELP: KIND is value, switch (sets 1) or append (repeatable, one per line).
# The environment variable wins over the default; the flag wins over both.
option() {
  OPT_FLAGS+=("$1") OPT_VARS+=("$2") OPT_DEFAULTS+=("$3") OPT_KINDS+=("$4") OPT_HELPS+=("$5")
  if [[ -z ${!2+x} ]]; then printf -v "$2" '%s' "$3"; fi
}

# The settings every script takes.
common_options() {
  option --name TPU_NAME "" value "TPU VM (node) name (required)"
  option --zone TPU_ZONE "" value "zone, e.g. us-west4-a (v5e) or us-central2-b (v4) (required)"
  option --project TPU_PROJECT "" value "Google Cloud project (default: gcloud's configured one)"
  option --dry-run TPU_DRY_RUN 0 switch "print the commands, one per line, shell-quoted, instead of running them"
}

# The layout on the workers, shared by setup.sh, run.sh and bench.sh.
remote_options() {
  option --remote-dir TPU_REMOTE_DIR adasd-jax value "the checkout on each worker (relative to its home)"
  option --venv TPU_VENV adasd-venv value "the virtual environment on each worker (relative to its home)"
}

usage() {
  local i default help flag var
  echo "usage: $SCRIPT $USAGE"
  echo
  echo "$ABOUT" | fold -s -w 100
  echo
  echo "Settings (flag, or environment variable; the flag wins):"
  for i in "${!OPT_FLAGS[@]}"; do
    default=${OPT_DEFAULTS[$i]}
    help=${OPT_HELPS[$i]}
    case ${OPT_KINDS[$i]} in
      switch) if [[ $default == 1 ]]; then default=on; else default=off; fi
              flag=${OPT_FLAGS[$i]} var="${OPT_VARS[$i]}=1" ;;
      *) flag="${OPT_FLAGS[$i]} X" var=${OPT_VARS[$i]} ;;
    esac
    # A help text that states its own default (or that the setting is required) is left as it is.
    if [[ $help != *"(default:"* && $help != *"(required)"* ]]; then help="$help (default: ${default:-none})"; fi
    printf '  %-22s %-20s %s\n' "$flag" "$var" "$help"
  done
  echo "  -h, --help             this text"
}

parse_args() {
  local arg flag value i found
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h|--help) usage; exit 0 ;;
      --) REST=("$@"); return ;;
      --*) ;;
      *) die "unexpected argument '$arg': settings are --flags, and the command's own arguments go after -- (see $SCRIPT --help)" ;;
    esac
    flag=${arg%%=*}
    found=""
    for i in "${!OPT_FLAGS[@]}"; do
      if [[ ${OPT_FLAGS[$i]} == "$flag" ]]; then found=$i; break; fi
    done
    [[ -n $found ]] || die "$SCRIPT has no option $flag (see $SCRIPT --help)"
    if [[ ${OPT_KINDS[$found]} == switch ]]; then
      [[ $arg == "$flag" ]] || die "$flag takes no value"
      printf -v "${OPT_VARS[$found]}" '%s' 1
      continue
    fi
    if [[ $arg == *=* ]]; then
      value=${arg#*=}
    else
      (($#)) || die "$flag needs a value (see $SCRIPT --help)"
      value=$1
      shift
    fi
    if [[ ${OPT_KINDS[$found]} == append && -n ${!OPT_VARS[$found]} ]]; then
      printf -v "${OPT_VARS[$found]}" '%s\n%s' "${!OPT_VARS[$found]}" "$value"
    else
      printf -v "${OPT_VARS[$found]}" '%s' "$value"
    fi
  done
}

# require VAR...: each named setting must be non-empty.
require() {
  local var i
  for var in "$@"; do
    [[ -n ${!var} ]] && continue
    for i in "${!OPT_VARS[@]}"; do
      if [[ ${OPT_VARS[$i]} == "$var" ]]; then die "${OPT_FLAGS[$i]} (or $var) is required"; fi
    done
    die "$var is required"
  done
}

# quote WORD: WORD as a POSIX shell word, bare when safe (the same rule as Python's shlex.quote).
quote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s != *[!A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

quote_all() {
  local word sep=""
  for word in "$@"; do printf '%s%s' "$sep" "$(quote "$word")"; sep=" "; done
}

# run CMD...: run it, or under --dry-run print it on one line.
run() {
  if [[ $TPU_DRY_RUN == 1 ]]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

# gcloud_tpu ARGS...: `gcloud compute tpus ARGS... --zone=Z [--project=P]`.
gcloud_tpu() {
  local place=("--zone=$TPU_ZONE")
  if [[ -n $TPU_PROJECT ]]; then place+=("--project=$TPU_PROJECT"); fi
  run gcloud compute tpus "$@" "${place[@]}"
}

# ssh_all COMMAND [FLAGS...]: run a shell command on every worker at once.
ssh_all() {
  local command=$1
  shift
  gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker=all "$@" --command="$command"
}

# home_path PATH: PATH as a word for the workers' shell, relative paths taken from the home directory.
home_path() {
  if [[ $1 == /* ]]; then
    quote "$1"
  else
    # shellcheck disable=SC2016  # $HOME is for the workers' shell to expand
    printf '"$HOME"/%s' "$(quote "$1")"
  fi
}

# The settings of a run on the workers, shared by run.sh and bench.sh.
run_options() {
  option --logs-dir TPU_LOGS_DIR tpu-logs value "local directory of per-worker logs, LOGS_DIR/RUN_ID/WORKER.log"
  option --run-id TPU_RUN_ID "$(date +%Y%m%d-%H%M%S)" value "this run's name (default: the current time, YYYYmmdd-HHMMSS)"
  option --env TPU_ENV "" append "KEY=VALUE to set on the workers, repeatable (TPU_ENV: one per line)"
  option --stream TPU_STREAM 0 switch "print every worker's output here as it comes instead of one log file per worker"
}

# adasd_command ARGS...: the workers' shell command that runs `adasd ARGS...` in the installed checkout.
# ADASD_DISTRIBUTED=1: every worker joins one JAX cluster (jax.distributed.initialize() finds the slice's
# workers from the TPU VM's metadata; on one host it is a cluster of one). The compilation cache outlives
# the run (a second run of the same shapes skips compiling); --env settings come last, so they override these.
adasd_command() {
  local line
  # shellcheck disable=SC2016  # $HOME is for the workers' shell to expand
  printf 'cd %s && env JAX_PLATFORMS=tpu ADASD_DISTRIBUTED=1 PYTHONUNBUFFERED=1 %s' "$(home_path "$TPU_REMOTE_DIR")" \
    'JAX_COMPILATION_CACHE_DIR="$HOME"/.cache/adasd-jax/jax-compile'
  while IFS= read -r line; do
    if [[ -z $line ]]; then continue; fi
    [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$line' is not KEY=VALUE"
    printf ' %s' "$(quote "$line")"
  done <<< "$TPU_ENV"
  printf ' %s/bin/adasd %s' "$(home_path "$TPU_VENV")" "$(quote_all "$@")"
}

# run_adasd ARGS...: `adasd ARGS...` on all workers at once (multi-host JAX needs every process), each
# worker's output in LOGS_DIR/RUN_ID/WORKER.log unless --stream; worker 0's log is printed at the end.
run_adasd() {
  local command logs rc=0
  command=$(adasd_command "$@")
  if [[ $TPU_STREAM == 1 ]]; then
    ssh_all "$command"
    return
  fi
  logs=$TPU_LOGS_DIR/$TPU_RUN_ID
  run mkdir -p "$logs"
  ssh_all "$command" --output-directory="$logs" || rc=$?
  if [[ $TPU_DRY_RUN == 1 ]]; then return; fi
  if [[ -f $logs/0.log ]]; then
    echo "== worker 0: $logs/0.log"
    cat "$logs/0.log"
  fi
  echo "logs of every worker: $logs/" >&2
  if ((rc != 0)); then echo "error: adasd failed on a worker (gcloud exit $rc): see $logs/" >&2; exit "$rc"; fi
}
