#!/usr/bin/env bash
# Install what SoE needs on a fresh Debian/Ubuntu machine, idempotently:
#   - redis-server (+ redis-tools) and a Java runtime for Spark, from Debian packages when missing;
#   - a virtualenv at .venv in the repo root with SoE and its pinned dependencies (".[dev]", or $SOE_EXTRAS).
# Re-running is cheap: pip is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} from Debian packages" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian starts a system redis on 6379 after install; SoE runs its own servers, so stop that one.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server 2>/dev/null || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
# Which extras of pyproject.toml to install: "dev" here (tests, lint, Airflow); deploy/Dockerfile sets
# SOE_EXTRAS to "" (runtime only) or e.g. "airflow,gpu", so the image installs through this same step.
extras=${SOE_EXTRAS-dev}
spec="."
stamp=".venv/.soe-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -n "$extras" ]; then spec=".[$extras]"; fi
if [ "$extras" != "dev" ]; then stamp="$stamp-extras-${extras:-none}"; stamp=${stamp//,/_}; fi
if [ ! -f "$stamp" ]; then
  echo "bootstrap: pip install -e '$spec' (torch pinned to 2.13.0; Airflow takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$spec"
  rm -f .venv/.soe-installed-*
  touch "$stamp"
fi
