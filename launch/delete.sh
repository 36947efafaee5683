#!/usr/bin/env bash
# Deletes a slice (or its queued resource), or does nothing if it is gone.
# The workdir in the bucket stays.
#   launch/delete.sh --name NAME --zone ZONE [--queued] [--dry-run]
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' QUEUED=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"
if [[ $QUEUED == 1 ]]; then
  kind=(queued-resources)
  extra=(--force)
else
  kind=(tpu-vm)
  extra=()
fi
if [[ $DRY_RUN == 0 ]] && ! gcloud compute tpus "${kind[@]}" describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "$NAME does not exist in $ZONE"
  exit 0
fi
gc compute tpus "${kind[@]}" delete "$NAME" --zone "$ZONE" "${extra[@]}" --quiet
