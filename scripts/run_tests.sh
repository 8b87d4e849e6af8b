#!/usr/bin/env bash
# The test command of the README and of CI: set up .venv, build nms/, run the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/run_tests.sh -k nms`; `-n 0` runs in this
# process instead of the TEST_WORKERS worker processes, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1 GLOG_v=3
# pytest exits 5 when no test ran; that is a failure here as well
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" "$@"
