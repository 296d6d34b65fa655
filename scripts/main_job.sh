#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded defaults (local Spark, one local Redis, CPU).
# Installs what is needed, then runs the hourly refresh end to end on demo data and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SOE_DATA__ROOT="${SOE_DATA__ROOT:-$PWD/data/demo}"
exec .venv/bin/python -m soe.flows.main_job "$@"
