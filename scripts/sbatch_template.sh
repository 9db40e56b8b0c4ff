#!/bin/bash
# A plain sbatch script for llmft, for clusters without hydra-submitit-launcher (with it, use
# `llmft train -m hydra/launcher=slurm ...` instead). Copy, edit the #SBATCH lines, then:
#   sbatch scripts/sbatch_template.sh +strategy=lora train.lr=2e-4
# One task per node: each node's llmft starts that node's ranks (hardware.nproc_per_node) and
# meets the others at the job's first node. The run folder is named after the job id, which a
# requeued job keeps, so a requeue (preemption, node failure) resumes from the last checkpoint.
# Two minutes before the time limit SLURM signals this script (USR2); it passes the signal to
# srun, every rank saves a checkpoint at its next step and the job requeues itself. One rank that
# dies ends the whole step (--kill-on-bad-exit) instead of leaving the others waiting.
#SBATCH --job-name=llmft
#SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --output=slurm-%j.out
set -euo pipefail

# module load cuda/12.4
# source ~/venvs/llmft/bin/activate

RUN_DIR="outputs/slurm/${SLURM_JOB_NAME}-${SLURM_JOB_ID}"
srun --kill-on-bad-exit=1 llmft train hardware=multinode hardware.nnodes="$SLURM_NNODES" \
    hardware.nproc_per_node="${SLURM_GPUS_PER_NODE:-8}" train.save_steps=500 \
    hydra.run.dir="$RUN_DIR" "$@" &
SRUN=$!
trap 'kill -USR2 "$SRUN" 2>/dev/null' USR2   # srun passes it on to every task
status=0
wait "$SRUN" || status=$?
while kill -0 "$SRUN" 2>/dev/null; do        # the trap ended the first wait early
    status=0
    wait "$SRUN" || status=$?
done
exit "$status"
