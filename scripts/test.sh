#!/usr/bin/env bash
# The test suite on a fresh machine: install what is needed, run the linters, then pytest.
# Slow scale tests are marked `slow` and excluded here; run them apart with: scripts/test.sh -m slow
# The GPU lane (skips without CUDA): scripts/test.sh -m gpu
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
bash scripts/lint.sh || { echo "lint failed: fix the findings above (ruff, layer contracts, mypy)" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then  # pytest: no tests collected (e.g. a -k filter matched nothing) is not a failure
  echo "no tests collected" >&2
  rc=0
fi
exit "$rc"
