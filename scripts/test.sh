#!/usr/bin/env bash
# The test suite: set up, then run every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/fetch-samples.sh
bash scripts/fetch-models.sh
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  exec cargo test --workspace --locked --no-fail-fast "$@"
fi
