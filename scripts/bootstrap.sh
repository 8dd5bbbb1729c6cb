#!/usr/bin/env bash
# Prepares a fresh machine: a virtualenv in .venv with edgegw and its test tools, and the
# mosquitto broker from Debian's packages when it is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[test]'

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "bootstrap: installing mosquitto (Debian package)" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mosquitto >/dev/null
fi
# Debian starts a mosquitto service on port 1883 after installing it; the tests and the demo
# start their own brokers on free ports, so it is harmless, but the demo prefers 1883 when free.
