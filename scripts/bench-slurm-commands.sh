#!/usr/bin/env bash
# Counts the Slurm commands kiln-hpc issues while tracking a large job array to completion
# (default 1000 tasks; KILN_BENCH_TASKS to change), on the local cluster of slurm-local.sh.
# Each of sbatch/squeue/sacct/scontrol/scancel is wrapped on PATH to log its calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}
scripts/slurm-local.sh up
KILN_REQUIRE_SLURM=1 cargo test --release --workspace --test it -- --ignored --nocapture \
    command_count_while_tracking_a_large_array 2>&1 | grep -E "tracked|test result|panicked|error"
