#!/usr/bin/env bash
# Usage: bash scripts/run_standalone_train.sh DEVICE_ID BACKBONE_CKPT DATASET_PATH [CONFIG] [train.py args...]
# Trains in the background like the reference script: log in train_<config>.log, pid in
# train_<config>.pid, outputs in work_dirs/<config>/. BACKBONE_CKPT may be "none" to train
# from scratch. DEVICE_TARGET (CPU|GPU|Ascend, default GPU if nvidia-smi works, else CPU)
# picks the device.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 DEVICE_ID BACKBONE_CKPT DATASET_PATH [CONFIG] [train.py args...]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE_ID=$1; BACKBONE=$2; DATA=$3; CONFIG=${4:-configs/m2det512_vgg.yaml}
shift $(( $# >= 4 ? 4 : 3 ))
if [ -z "${DEVICE_TARGET:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then DEVICE_TARGET=GPU; else DEVICE_TARGET=CPU; fi
fi
[ -d "$DATA" ] || { echo "dataset path not found: $DATA" >&2; exit 2; }
[ "$BACKBONE" = "none" ] || [ -f "$BACKBONE" ] || { echo "backbone checkpoint not found: $BACKBONE" >&2; exit 2; }
PY=${PYTHON:-$ROOT/.venv/bin/python}; [ -x "$PY" ] || PY=python
NAME=$(basename "$CONFIG" .yaml)
OUT=${OUTPUT_DIR:-$ROOT/work_dirs/$NAME}
mkdir -p "$OUT"
ARGS=(--config "$CONFIG" --data_dir "$DATA" --device_target "$DEVICE_TARGET" --device_id "$DEVICE_ID" --output_dir "$OUT")
[ "$BACKBONE" = "none" ] || ARGS+=(--backbone_ckpt "$BACKBONE")
cd "$ROOT"
nohup "$PY" train.py "${ARGS[@]}" "$@" > "$OUT/train_$NAME.log" 2>&1 &
echo $! > "$OUT/train_$NAME.pid"
echo "training started (pid $(cat "$OUT/train_$NAME.pid")); log: $OUT/train_$NAME.log"
