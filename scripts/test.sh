#!/usr/bin/env bash
# The test command: installs what the tests need, checks lint and types, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/python -m ruff check edgegw simulators tests bench
.venv/bin/python -m ruff format --check edgegw simulators tests bench
.venv/bin/python -m mypy --strict edgegw
exec .venv/bin/python -m pytest -q "$@"
