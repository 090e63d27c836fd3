#!/usr/bin/env bash
# Side-by-side comparison of kiln with the tools our users would otherwise pick (issue 9).
#
#   benches/compare/run.sh [--scale F] [--rounds N] [CASE...]
#
# Installs the peers (requirements.txt) in a venv under the target directory, builds kiln's
# side (examples/compare.rs), runs every case (or those whose names contain CASE) alternately
# after a warm-up, checks both sides did the same work, and writes the table into
# docs/benchmarks.md (with CASE filters, only those rows are replaced). Never part of
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}
venv=${KILN_COMPARE_VENV:-$CARGO_TARGET_DIR/compare-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r benches/compare/requirements.txt
cargo build --release --example compare
"$venv/bin/python" benches/compare/harness.py \
    --kiln "$CARGO_TARGET_DIR/release/examples/compare" \
    --python "$venv/bin/python" \
    --work "$CARGO_TARGET_DIR/compare-work" \
    --write-docs "$@"
