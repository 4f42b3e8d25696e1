#!/usr/bin/env bash
# Runs the whole test suite against real components: sets up what is missing, then cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --locked "$@"
