#!/usr/bin/env bash
# Creates .venv (if missing) with the pinned requirements (runtime and every extra: the tests
# use them all) and builds the compiled parts in place (scripts/make.sh).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
  -r requirements/convert.txt -r requirements/onnx.txt -r requirements/serve.txt -r requirements/plot.txt \
  -r requirements/dev.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import mindspore, numpy; assert mindspore.__version__ == '2.8.0', mindspore.__version__"
PATH="$PWD/.venv/bin:$PATH" bash scripts/make.sh >/dev/null
