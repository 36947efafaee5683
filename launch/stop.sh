#!/usr/bin/env bash
# Stops a run on every worker as a preemption would: SIGTERM, after which
# the run writes a checkpoint and exits (SIGKILL if it is still there after
# 60 s). Stopping a run that is not running does nothing.
#   launch/stop.sh --name NAME --zone ZONE --run RUN [--dry-run]
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' RUN=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --run) RUN=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"; need run "$RUN"
check_run_name "$RUN"

REMOTE="pidf=\$HOME/runs/$RUN.pid
if [ ! -f \"\$pidf\" ]; then echo \"\$(hostname): $RUN is not running\"; exit 0; fi
pid=\$(cat \"\$pidf\")
if kill -TERM \"\$pid\" 2>/dev/null; then
  for _ in \$(seq 60); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done
  if kill -0 \"\$pid\" 2>/dev/null; then echo \"\$(hostname): $RUN still running after 60 s: SIGKILL\"; kill -KILL \"\$pid\"; fi
fi
rm -f \"\$pidf\"
echo \"\$(hostname): $RUN stopped\""

gc compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
