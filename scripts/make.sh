#!/usr/bin/env bash
# Build the compiled parts in place:
#   nms/_soft_nms*.so               the Cython soft-NMS
#   m2det/kernels/_winograd_f23.so  the Winograd F(2x2) and F(4x4) transforms (winograd_f23.c + winograd_f43.c; m2det/winograd.py; MindSpore aot custom ops; $CC, default gcc)
#   m2det/kernels/_direct_conv3x3.so  direct 3x3 convolutions for narrow layers (m2det/direct_conv.py; the same kind)
#   m2det/kernels/_group_norm_relu.so GroupNorm + ReLU for training (m2det/group_norm_relu.py; the same kind)
#   m2det/kernels/_batch_norm_relu.so BatchNorm + ReLU for training (m2det/batch_norm_relu.py; the same kind)
#   m2det/kernels/_max_pool.so      max-pooling for training (m2det/max_pool.py; the same kind)
#   m2det/kernels/_squared_sum.so   the squared sum of the gradients for their global norm (src/training/grad_clip.py; the same kind)
# all by `python setup.py build_ext --inplace` (`pip install .` builds the same into the installed package).
#
# Python used: $PYTHON if set, else `python` on PATH if it has Cython and NumPy, else the
# repository's .venv/bin/python (so `bash scripts/make.sh` works without activating it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif command -v python >/dev/null 2>&1 && python -c "import Cython, numpy" >/dev/null 2>&1; then
    py=python
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    echo "make.sh: no python with Cython and NumPy found (set PYTHON=...)" >&2
    exit 1
fi
echo "make.sh: building nms._soft_nms and the m2det/kernels libraries with $("$py" -c 'import sys; print(sys.executable)')"
"$py" setup.py build_ext --inplace
