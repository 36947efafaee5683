# shellcheck shell=bash
# Shared by the launch/ scripts (sourced, not run).
#
# Every gcloud call goes through `gc`: with --dry-run it prints the exact
# command (shell-quoted, one per line, runnable as printed) instead of
# running it. The TPU VM API path (`gcloud compute tpus tpu-vm ...`,
# `--worker=all`) is what these scripts use; see the README's TPU section.

set -euo pipefail

DRY_RUN=0
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAUNCH_DIR/.." && pwd)

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

gc() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' gcloud "$@" | sed 's/ $//'
    echo
  else
    gcloud "$@"
  fi
}

# the value of a --flag, or an error naming it when it is missing
need() {
  [[ -n ${2:-} ]] || die "missing --$1"
}

# the runtime (software) version Google documents for an accelerator type
runtime_for() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    *) die "unknown accelerator type '$1' (e.g. v5litepod-16, v4-16, v5p-8, v6e-8)" ;;
  esac
}

# the jax version requirements.txt pins: the workers install jax[tpu] of it
pinned_jax() {
  sed -n 's/^jax==//p' "$REPO_DIR/requirements.txt"
}

# a run name is a file name on the workers
check_run_name() {
  [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$1': letters, digits, '.', '_' and '-' only"
}
