#!/usr/bin/env bash
# Starts a training run on every worker of a slice, in the background,
# under a run name; a second start of a run that is still running is
# refused (exit 4). The workers need the commit set up (launch/setup.sh).
#   launch/run.sh --name NAME --zone ZONE --run RUN --config configs/detr_r50.py
#                 --workdir gs://BUCKET/RUN [--commit REV] [--dry-run] [-- --config.a.b=v ...]
# Every worker runs the same command; jax.distributed finds its peers on a
# TPU VM by itself. Logs: ~/runs/RUN.log on each worker (launch/logs.sh).
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' RUN='' CONFIG='' WORKDIR='' REV=HEAD
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --run) RUN=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --commit) REV=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (config overrides go after --)" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"; need run "$RUN"; need config "$CONFIG"; need workdir "$WORKDIR"
check_run_name "$RUN"
[[ -f $REPO_DIR/$CONFIG ]] || die "no config file '$CONFIG' in $REPO_DIR"
COMMIT=$(git -C "$REPO_DIR" rev-parse --short=12 "$REV^{commit}") || die "no commit '$REV' in $REPO_DIR"
ARGS=$(printf '%q ' -m detr_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@")

REMOTE="set -euo pipefail
d=\$HOME/detr_jax/$COMMIT
if [ ! -f \"\$d/.ready\" ]; then echo \"\$(hostname): commit $COMMIT is not set up (launch/setup.sh)\" >&2; exit 3; fi
mkdir -p \$HOME/runs
pidf=\$HOME/runs/$RUN.pid
if [ -f \"\$pidf\" ] && kill -0 \"\$(cat \"\$pidf\")\" 2>/dev/null; then
  echo \"\$(hostname): run $RUN is running (pid \$(cat \"\$pidf\")); not started twice\" >&2; exit 4
fi
cd \"\$d\"
nohup .venv/bin/python $ARGS>> \$HOME/runs/$RUN.log 2>&1 < /dev/null &
echo \$! > \"\$pidf\"
echo \"\$(hostname): started $RUN (pid \$!), commit $COMMIT\""

gc compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
