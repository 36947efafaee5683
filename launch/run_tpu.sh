#!/usr/bin/env bash
# Runs a config on every worker of a TPU VM slice (idempotent: prepares each
# VM once, resumes from the workdir's checkpoints).
#   launch/run_tpu.sh NAME ZONE configs/detr_r50.py gs://BUCKET/workdir [--config.x=y ...]
set -euo pipefail
NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REPO=$(git remote get-url origin 2>/dev/null || echo "")
SETUP='set -e; if [ ! -d ~/detr_jax ]; then git clone '"$REPO"' ~/detr_jax; fi;
cd ~/detr_jax && git pull --ff-only || true;
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi;
.venv/bin/pip install -q -e . "jax[tpu]"'
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$SETUP"
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/detr_jax && nohup .venv/bin/python -m detr_jax.main --config=$CONFIG --workdir=$WORKDIR $* > ~/detr_jax.log 2>&1 &"
echo "started on every worker of $NAME; logs: ~/detr_jax.log on each, TensorBoard: $WORKDIR"
