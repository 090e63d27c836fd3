#!/bin/bash
#SBATCH --job-name=train-1
#SBATCH --partition=gpu
#SBATCH --account=lab42
#SBATCH --qos=high
#SBATCH --constraint=ib&avx512
#SBATCH --output=logs/%x-%A_%a.out
#SBATCH --error=logs/%x-%A_%a.err
#SBATCH --time=1-02:02:00
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=4
#SBATCH --mem=8000M
#SBATCH --gres=gpu:a100:2
#SBATCH --array=0-9%2
#SBATCH --dependency=afterok:101:102,afterany:103,singleton
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --no-requeue
#SBATCH --chdir=/scratch/lab42/run
#SBATCH --exclusive
#SBATCH --mail-type=END
# Written by kiln-hpc.
set -eo pipefail
module load cuda/12.4
source ~/venv/bin/activate
export KILN_STORE='/scratch/store dir'
export KILN_ARRAY_TASK_ID=$(( SLURM_ARRAY_TASK_ID + 0 ))
export KILN_ARRAY_TASK_MIN=0 KILN_ARRAY_TASK_MAX=9
exec kiln train --lr 'it'\''s'
