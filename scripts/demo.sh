#!/usr/bin/env bash
# The main job: set up, build, and run the embedded demo graph (graphs/demo.toml) on the sample
# videos. Idempotent; a second run takes its results from the memo cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/fetch-samples.sh
bash scripts/fetch-models.sh
cargo build --release --locked -q
exec target/release/medgen run graphs/demo.toml "$@"
