#!/usr/bin/env bash
# Puts the code of one commit on every worker of a slice, with its own
# virtualenv and the jax[tpu] that requirements.txt pins; a worker that has
# that commit already is left alone (idempotent). No git remote is needed:
# the commit is archived from this checkout and copied over.
#   launch/setup.sh --name NAME --zone ZONE [--commit REV] [--dry-run]
# On each worker: ~/detr_jax/<commit>/ (code and .venv), and ~/detr_jax/current
# pointing at it.
source "$(dirname "$0")/lib.sh"
NAME='' ZONE='' REV=HEAD
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --commit) REV=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"
COMMIT=$(git -C "$REPO_DIR" rev-parse --short=12 "$REV^{commit}") || die "no commit '$REV' in $REPO_DIR"
if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no) ]]; then
  echo "note: uncommitted changes are not shipped; the workers get commit $COMMIT" >&2
fi
JAX=$(pinned_jax)
[[ -n $JAX ]] || die "no jax==VERSION line in $REPO_DIR/requirements.txt"
ARCHIVE=${TMPDIR:-/tmp}/detr_jax-$COMMIT.tar.gz
git -C "$REPO_DIR" archive --format=tar.gz -o "$ARCHIVE" "$COMMIT"

REMOTE="set -euo pipefail
d=\$HOME/detr_jax/$COMMIT
if [ -f \"\$d/.ready\" ]; then echo \"\$(hostname): $COMMIT is set up\"; exit 0; fi
rm -rf \"\$d\" && mkdir -p \"\$d\"
tar -xzf \$HOME/detr_jax-$COMMIT.tar.gz -C \"\$d\"
python3 -m venv \"\$d/.venv\"
\"\$d/.venv/bin/pip\" install -q --upgrade pip
\"\$d/.venv/bin/pip\" install -q -e \"\$d\" 'jax[tpu]==$JAX'
touch \"\$d/.ready\"
ln -sfn \"\$d\" \$HOME/detr_jax/current
echo \"\$(hostname): $COMMIT ready\""

gc compute tpus tpu-vm scp "$ARCHIVE" "$NAME:detr_jax-$COMMIT.tar.gz" --zone "$ZONE" --worker=all
gc compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
