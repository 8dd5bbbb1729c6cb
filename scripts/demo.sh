#!/usr/bin/env bash
# The demo: a Modbus and an OPC UA PLC simulator, a broker and the gateway; prints each MQTT
# message as a subscriber receives it, then a summary. `--duration SECONDS` stops it by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/edgegw demo "$@"
