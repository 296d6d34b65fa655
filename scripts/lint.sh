#!/usr/bin/env bash
# The static checks the test command runs before pytest (after scripts/bootstrap.sh):
#   ruff (style and bugs), import-linter (the layer contracts in pyproject.toml), mypy (base + store).
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
echo "lint: ruff check" >&2
.venv/bin/ruff check --quiet . || rc=1
echo "lint: lint-imports (layers: dags|bench > soe > pipelines|encoder|store > core)" >&2
.venv/bin/lint-imports --no-cache >/tmp/soe-lint-imports.log 2>&1 || { cat /tmp/soe-lint-imports.log; rc=1; }
echo "lint: mypy core store" >&2
.venv/bin/mypy --no-error-summary core store || rc=1
exit "$rc"
