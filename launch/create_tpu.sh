#!/usr/bin/env bash
# Creates a TPU VM slice if it does not exist (spot by default: training
# resumes from its checkpoints after preemption).
#   launch/create_tpu.sh NAME ZONE [ACCELERATOR=v3-32] [VERSION=tpu-ubuntu2204-base]
set -euo pipefail
NAME=$1 ZONE=$2 ACC=${3:-v3-32} VERSION=${4:-tpu-ubuntu2204-base}
if gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "$NAME exists"; exit 0
fi
gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACC" \
  --version "$VERSION" --spot
