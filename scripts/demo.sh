#!/usr/bin/env bash
# The demo: a PLC simulator, a broker and the gateway; prints what a subscriber receives.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/edgegw demo "$@"
