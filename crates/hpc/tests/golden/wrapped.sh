#!/bin/bash
#SBATCH --job-name=resumable
#SBATCH --time=0-01:00:00
#SBATCH --cpus-per-task=1
#SBATCH --array=0-3
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR2@120
# Written by kiln-hpc.
set -eo pipefail
export KILN_ARRAY_TASK_ID=$(( SLURM_ARRAY_TASK_ID + 0 ))
export KILN_ARRAY_TASK_MIN=0 KILN_ARRAY_TASK_MAX=3
kiln_requeue_limit=3
kiln_signal_lead=120
kiln_command='kiln-train --resume'
set +e
kiln_child=
kiln_signal=
kiln_trapped=
kiln_cause=
kiln_on_signal() {
    kiln_trapped=1
    kiln_signal=$1
    if [ -z "$kiln_cause" ]; then
        # A signal shortly before the end time is the time-limit warning; any other is a
        # preemption (or an operator's scancel --signal).
        kiln_cause=preemption
        local end now
        end=$(squeue -h -j "${SLURM_JOB_ID:-0}" -O EndTime 2>/dev/null | tr -d ' ')
        now=$(date +%s)
        case $end in
            '' | N/A | NONE | Unknown | UNLIMITED) ;;
            *)
                end=$(date -d "$end" +%s 2>/dev/null) &&
                    [ $((end - now)) -le $((kiln_signal_lead + 30)) ] && kiln_cause=timeout
                ;;
        esac
    fi
    echo "kiln-hpc: SIG$1 received ($kiln_cause); forwarding it to process ${kiln_child:-?}" >&2
    if [ -n "$kiln_child" ]; then
        kill -s "$1" "$kiln_child" 2>/dev/null
    fi
}
trap 'kiln_on_signal USR2' USR2
trap 'kiln_on_signal TERM' TERM
kiln-train --resume &
kiln_child=$!
# A signal that came before the command started is passed on now.
if [ -n "$kiln_signal" ]; then
    kill -s "$kiln_signal" "$kiln_child" 2>/dev/null
fi
while :; do
    kiln_trapped=
    wait "$kiln_child"
    kiln_status=$?
    # wait returns early when a trap runs; wait again until the command itself has ended.
    [ -z "$kiln_trapped" ] && break
done
if [ -n "$kiln_signal" ] && [ "$kiln_status" -ne 0 ]; then
    kiln_restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$kiln_restarts" -lt "$kiln_requeue_limit" ]; then
        echo "kiln-hpc: $kiln_command exited with status $kiln_status after $kiln_cause; requeueing job ${SLURM_JOB_ID:-?} (restart $((kiln_restarts + 1)) of $kiln_requeue_limit)" >&2
        if scontrol requeue "${SLURM_JOB_ID:-0}"; then
            # scontrol requeue ends this job; the sleep keeps the script from exiting first.
            sleep 30
        else
            echo "kiln-hpc: scontrol requeue failed; the job ends here" >&2
        fi
    else
        echo "kiln-hpc: $kiln_command exited with status $kiln_status after $kiln_cause; not requeueing (restarted $kiln_restarts times, limit $kiln_requeue_limit)" >&2
    fi
fi
exit "$kiln_status"
