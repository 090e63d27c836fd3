#!/bin/bash
#SBATCH --job-name=prep
#SBATCH --cpus-per-task=1
#SBATCH --no-requeue
# Written by kiln-hpc.
set -eo pipefail
exec kiln data prep --in 'raw data.csv'
