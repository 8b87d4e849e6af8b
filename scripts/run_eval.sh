#!/usr/bin/env bash
# Usage: bash scripts/run_eval.sh DEVICE_ID CHECKPOINT DATASET_PATH [CONFIG] [eval.py args...]
# Runs in the foreground and prints the COCO table; metrics.json goes next to the checkpoint (eval/).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 DEVICE_ID CHECKPOINT DATASET_PATH [CONFIG] [eval.py args...]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE_ID=$1; CKPT=$2; DATA=$3; CONFIG=${4:-configs/m2det512_vgg.yaml}
shift $(( $# >= 4 ? 4 : 3 ))
if [ -z "${DEVICE_TARGET:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then DEVICE_TARGET=GPU; else DEVICE_TARGET=CPU; fi
fi
PY=${PYTHON:-$ROOT/.venv/bin/python}; [ -x "$PY" ] || PY=python
cd "$ROOT"
exec "$PY" eval.py --config "$CONFIG" --checkpoint "$CKPT" --data_dir "$DATA" \
  --device_target "$DEVICE_TARGET" --device_id "$DEVICE_ID" "$@"
