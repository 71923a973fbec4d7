#!/usr/bin/env bash
# A Cloud TPU VM pod (v4, v5e, v5p, v6e): every host runs the same lmim process on its own chips,
# joined by JAX's distributed runtime (LMIM_TPU_POD=1: JAX asks the TPU metadata server for the
# coordinator, the host count and this host's rank).
#
#   bash launch/tpu_pod.sh SUBCOMMAND --name NAME --zone ZONE [--type v4-32] [options] [-- TRAIN ARGS]
#
#   create     gcloud compute tpus tpu-vm create (--queued: a queued resource, waited on until ACTIVE)
#   copy       ship exactly the committed code (git archive HEAD) to every worker, into ~/lmim;
#              refused while the checkout has uncommitted changes, unless --allow-dirty
#   setup      on every worker: ~/lmim/.venv with requirements.txt and jax[tpu] at the same version
#   preflight  on every worker: same code and versions everywhere, and a workdir shared by all hosts
#   run        on every worker, in the background: python -m lmim.train TRAIN ARGS >> ~/lmim/train.log
#   logs       follow worker 0's ~/lmim/train.log
#   delete     delete the TPU VM (--queued: the queued resource)
#   all        create, copy, setup, preflight, run, logs
#
# Options: --name NAME, --zone ZONE, --project PROJECT (else gcloud's default), --type TYPE
# (accelerator type: v4-32, v5litepod-16, v5p-16, ...; create/all), --version VERSION (runtime;
# default by type: v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e
# v2-alpha-tpuv6e), --queued, --spot, --shared-fs (the workdir is a filesystem mounted on every
# worker), --allow-dirty (copy although tracked files have uncommitted changes), --dry-run (print
# each command, prefixed "+ ", and run nothing).
#
# The workdir (--workdir in TRAIN ARGS) must be a bucket (gs://...) or, with --shared-fs, a path
# mounted on every worker: a host-local path would split each checkpoint across machines. On spot
# capacity lmim saves and exits 0 when preempted; `create` again (copy, setup) and `run` the same
# command to resume from the latest checkpoint.
#
#   bash launch/tpu_pod.sh all --name lmim-v4 --zone us-central2-b --type v4-32 --spot -- \
#       --config configs/lmim_vitb16_in1k.py --workdir gs://my-bucket/lmim_vitb16
set -euo pipefail
me=launch/tpu_pod.sh
root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: bash $me {create|copy|setup|preflight|run|logs|delete|all} --name NAME --zone ZONE [--type TYPE] [options] [-- TRAIN ARGS]"
libtpu_url=https://storage.googleapis.com/jax-releases/libtpu_releases.html

sub="" name="" zone="" project="" type="" version="" queued=0 spot=0 shared_fs=0 allow_dirty=0 dry_run=0
value() {  # value OPTION "$#" VALUE: VALUE, or exit 2 when missing
  if [[ $2 -lt 2 || "$3" == --* ]]; then echo "$me: $1 needs a value; $usage" >&2; exit 2; fi
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) value "$1" $# "${2-}"; name="$2"; shift 2 ;;
    --zone) value "$1" $# "${2-}"; zone="$2"; shift 2 ;;
    --project) value "$1" $# "${2-}"; project="$2"; shift 2 ;;
    --type) value "$1" $# "${2-}"; type="$2"; shift 2 ;;
    --version) value "$1" $# "${2-}"; version="$2"; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --shared-fs) shared_fs=1; shift ;;
    --allow-dirty) allow_dirty=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    create|copy|setup|preflight|run|logs|delete|all)
      if [[ -n "$sub" ]]; then echo "$me: two subcommands ($sub, $1); $usage" >&2; exit 2; fi
      sub="$1"; shift ;;
    *) echo "$me: unknown argument $1 (put the train arguments after --); $usage" >&2; exit 2 ;;
  esac
done
train_args=("$@")

# Validation, all of it before anything runs --------------------------------------------------
[[ -n "$sub" ]] || { echo "$me: missing subcommand; $usage" >&2; exit 2; }
[[ -n "$name" ]] || { echo "$me: missing --name; $usage" >&2; exit 2; }
[[ -n "$zone" ]] || { echo "$me: missing --zone; $usage" >&2; exit 2; }
if [[ "$sub" == create || "$sub" == all ]]; then
  [[ -n "$type" ]] || { echo "$me: missing --type (accelerator type, e.g. v4-32); $usage" >&2; exit 2; }
  if [[ -z "$version" ]]; then
    case "$type" in
      v4-*) version=tpu-ubuntu2204-base ;;
      v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) echo "$me: no default runtime for --type $type; give --version" >&2; exit 2 ;;
    esac
  fi
fi
workdir=""
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[$i]}" in
    --workdir) workdir="${train_args[$((i + 1))]-}" ;;
    --workdir=*) workdir="${train_args[$i]#--workdir=}" ;;
  esac
done
if [[ "$sub" == run || "$sub" == all || "$sub" == preflight ]]; then
  if [[ ${#train_args[@]} -eq 0 || -z "$workdir" ]]; then
    echo "$me: $sub needs the train arguments with --workdir after --, e.g. -- --config configs/lmim_vitb16_in1k.py --workdir gs://BUCKET/run" >&2
    exit 2
  fi
fi
if [[ ("$sub" == run || "$sub" == all) && "$workdir" != gs://* && $shared_fs -eq 0 ]]; then
  echo "$me: workdir $workdir is not a bucket (gs://...): a host-local workdir on a multi-host pod would split checkpoints across machines (pass --shared-fs if it is a filesystem mounted on every worker)" >&2
  exit 2
fi
jax_version=$(sed -n 's/^jax==\([^[:space:]]*\).*/\1/p' "$root/requirements.txt" | head -n 1)
if [[ ("$sub" == setup || "$sub" == all) && -z "$jax_version" ]]; then
  echo "$me: no jax==VERSION pin in $root/requirements.txt" >&2
  exit 2
fi

# Commands -----------------------------------------------------------------------------------
quote() {  # $1 as a shell word: bare when safe, else single-quoted (--flag='value' for a flag)
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"; quote "${BASH_REMATCH[2]}"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {  # print (dry run) or run one command
  if [[ $dry_run -eq 1 ]]; then
    local line="+" arg
    for arg in "$@"; do line+=" $(quote "$arg")"; done
    echo "$line"
  else
    "$@"
  fi
}
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
on_workers() {  # on_workers WORKER COMMAND: COMMAND in a shell on that worker (or all)
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$1" --command="$2"
}
train_words=""
for arg in "${train_args[@]+"${train_args[@]}"}"; do train_words+=" $(quote "$arg")"; done

do_create() {
  local spot_flag=()
  [[ $spot -eq 1 ]] && spot_flag=(--spot)
  if [[ $queued -eq 1 ]]; then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
        --accelerator-type="$type" --runtime-version="$version" "${spot_flag[@]+"${spot_flag[@]}"}"
    # A queued resource is granted later: wait until its TPU VM exists.
    local describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)')
    if [[ $dry_run -eq 1 ]]; then
      run "${describe[@]}"
      echo "$me: (dry run) the describe above repeats every 30 s until the state is ACTIVE" >&2
      return
    fi
    local state
    while true; do
      state=$("${describe[@]}")
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) echo "$me: queued resource $name is $state" >&2; exit 1 ;;
      esac
      echo "$me: queued resource $name is ${state:-unknown}; waiting..." >&2
      sleep 30
    done
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$type" \
        --version="$version" "${spot_flag[@]+"${spot_flag[@]}"}"
  fi
}

do_copy() {
  local commit
  if ! commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null); then
    echo "$me: copy ships the committed code, but $root is not a git checkout with a commit" >&2
    exit 2
  fi
  # Tracked files changed, or new code not yet added: both would be missing from the archive.
  if ! git -C "$root" diff --quiet HEAD -- 2>/dev/null || \
     [[ -n "$(git -C "$root" ls-files --others --exclude-standard -- lmim configs launch requirements.txt)" ]]; then
    local what="$root has uncommitted changes (to tracked files, or new files in lmim/, configs/, launch/); copy ships only commit $commit (HEAD), so every host runs the same code"
    if [[ $allow_dirty -eq 1 ]]; then
      echo "$me: warning: $what; the changes are left behind (--allow-dirty)" >&2
    elif [[ $dry_run -eq 1 ]]; then
      echo "$me: warning: $what; commit them, or pass --allow-dirty (a real run stops here)" >&2
    else
      echo "$me: $what; commit them first, or pass --allow-dirty to ship HEAD without them" >&2
      exit 2
    fi
  fi
  local tarball="${TMPDIR:-/tmp}/lmim-$name-$commit.tar.gz"
  run git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:lmim.tar.gz" "${where[@]}" --worker=all
  # lmim/ and configs/ are replaced whole (no stale modules); .venv and train.log are kept.
  on_workers all 'mkdir -p ~/lmim && rm -rf ~/lmim/lmim ~/lmim/configs && tar -xzf ~/lmim.tar.gz -C ~/lmim && rm ~/lmim.tar.gz'
  run rm -f "$tarball"
}

do_setup() {
  # numpy and jax here need Python >= 3.11; Ubuntu 22.04 runtimes ship 3.10, so install 3.11 first.
  on_workers all "cd ~/lmim && { command -v python3.11 >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv; }; } && { [ -x .venv/bin/python ] || python3.11 -m venv .venv; } && .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt && .venv/bin/python -m pip install --quiet --disable-pip-version-check \"jax[tpu]==$jax_version\" -f $libtpu_url"
}

do_preflight() {
  on_workers all "cd ~/lmim && LMIM_TPU_POD=1 .venv/bin/python -m lmim.preflight --workdir $(quote "$workdir")"
}

do_run() {
  # Every worker starts the same command; JAX's runtime joins them. nohup + no terminal: the run
  # outlives the ssh session. The log is appended to, so a resumed run keeps the earlier lines.
  on_workers all "cd ~/lmim && LMIM_TPU_POD=1 nohup .venv/bin/python -m lmim.train$train_words >> ~/lmim/train.log 2>&1 < /dev/null &"
}

do_logs() {
  on_workers 0 'tail -n 100 -F ~/lmim/train.log'
}

do_delete() {
  if [[ $queued -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

case "$sub" in
  all) do_create; do_copy; do_setup; do_preflight; do_run; do_logs ;;
  *) "do_$sub" ;;
esac
