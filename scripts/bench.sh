#!/usr/bin/env bash
# The whole benchmark suite (bench/README.md): prepares the machine like scripts/bootstrap.sh,
# adds the bench extra (matplotlib for the chart, psutil, py-spy), then runs `bench.suite` with
# the arguments given, e.g. `scripts/bench.sh --quick` or `scripts/bench.sh --only latency`.
# Results: bench/results/suite-latest.{json,md,png}. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
.venv/bin/python -m pip install --quiet -e '.[bench]'
exec .venv/bin/python -m bench.suite "$@"
