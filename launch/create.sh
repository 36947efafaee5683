#!/usr/bin/env bash
# Creates a TPU VM slice, or does nothing if it exists (idempotent).
#   launch/create.sh --name NAME --zone ZONE --type v5litepod-16
#                    [--runtime VERSION] [--spot] [--queued] [--dry-run]
# --type: the accelerator type (v5litepod-16 = v5e 4x4, 16 chips on 4 hosts;
#   v4-16 = v4 2x2x2). --runtime defaults to the version Google documents
#   for the type. --spot: preemptible at ~30 s notice (training resumes from
#   its checkpoints). --queued: a queued resource (waits for capacity)
#   instead of a direct create.
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' TYPE='' RUNTIME='' SPOT=0 QUEUED=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"; need type "$TYPE"
RUNTIME=${RUNTIME:-$(runtime_for "$TYPE")}
spot=()
[[ $SPOT == 1 ]] && spot=(--spot)

if [[ $QUEUED == 1 ]]; then
  if [[ $DRY_RUN == 0 ]] && gcloud compute tpus queued-resources describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
    echo "queued resource $NAME exists in $ZONE"
    exit 0
  fi
  gc compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${spot[@]}"
else
  if [[ $DRY_RUN == 0 ]] && gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
    echo "TPU VM $NAME exists in $ZONE"
    exit 0
  fi
  gc compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$RUNTIME" "${spot[@]}"
fi
