#!/usr/bin/env bash
# Follows a run's log on one worker (0: the one that prints the progress).
#   launch/logs.sh --name NAME --zone ZONE --run RUN [--worker N] [--lines N] [--dry-run]
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' RUN='' WORKER=0 LINES=100
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --run) RUN=$2; shift 2 ;;
    --worker) WORKER=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"; need run "$RUN"
check_run_name "$RUN"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines '$LINES': a number"
gc compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" "--worker=$WORKER" \
  --command "tail -n $LINES -F \$HOME/runs/$RUN.log"
