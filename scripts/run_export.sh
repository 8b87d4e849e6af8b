#!/usr/bin/env bash
# Usage: bash scripts/run_export.sh CHECKPOINT [CONFIG] [MINDIR|ONNX] [export.py args...]
# Writes CHECKPOINT's name with .mindir / .onnx (and its .json description) next to it.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 CHECKPOINT [CONFIG] [MINDIR|ONNX] [export.py args...]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CKPT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
CONFIG=${2:-configs/m2det512_vgg.yaml}
FORMAT=$(echo "${3:-MINDIR}" | tr '[:lower:]' '[:upper:]')
shift $(( $# >= 3 ? 3 : $# ))
case "$FORMAT" in
  MINDIR) EXT=mindir ;;
  ONNX) EXT=onnx ;;
  *) echo "format must be MINDIR or ONNX, got $FORMAT" >&2; exit 2 ;;
esac
PY=${PYTHON:-$ROOT/.venv/bin/python}; [ -x "$PY" ] || PY=python
cd "$ROOT"
exec "$PY" export.py --config "$CONFIG" --checkpoint "$CKPT" --file_format "$FORMAT" \
  --out "${CKPT%.ckpt}.$EXT" "$@"
