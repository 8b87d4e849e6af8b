#!/usr/bin/env bash
# Usage: bash scripts/convert_vgg.sh PATH/vgg16_reducedfc.pth
# Writes PATH/vgg16_reducedfc.ckpt (SSD's VGG16 reduced-fc weights, keys layers.N.{weight,bias}),
# the file train.py's --backbone_ckpt expects.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash $0 PATH/vgg16_reducedfc.pth" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PTH=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
PY=${PYTHON:-$ROOT/.venv/bin/python}; [ -x "$PY" ] || PY=python
cd "$ROOT"
exec "$PY" convert.py --backbone_path "$PTH" --backbone vgg16
