#!/bin/bash
# Generates a corpus of real Slurm outputs on the local cluster.
set -u
cd "${1:-.}"
F=$(cat format.txt)
ok=$(sbatch --parsable -J ok -o /tmp/corp/%x-%j.out --wrap 'echo hi')
fail=$(sbatch --parsable -J fail3 -o /tmp/corp/%x-%j.out --wrap 'exit 3')
arr=$(sbatch --parsable -J arr --array=1-6%2 -o /tmp/corp/%x-%A_%a.out --wrap 'sleep 4')
run=$(sbatch --parsable -J cancel-running --wrap 'sleep 300')
held=$(sbatch --parsable -J cancel-pending --hold --wrap 'true')
tl=$(sbatch --parsable -J timeout -t 1 --wrap 'sleep 300')
dep=$(sbatch --parsable -J dep-never -d afterok:$fail --wrap 'true')
depk=$(sbatch --parsable -J dep-kill -d afterok:$fail --kill-on-invalid-dep=yes --wrap 'true')
rq=$(sbatch --parsable -J requeue --requeue --wrap 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then scontrol requeue $SLURM_JOB_ID; sleep 30; fi; echo second')
sig=$(sbatch --parsable -J killed-by-signal --wrap 'kill -9 $$')
echo "$ok $fail $arr $run $held $tl $dep $depk $rq $sig" > ids
ids="$ok,$fail,$arr,$run,$held,$tl,$dep,$depk,$rq,$sig"
sleep 3
squeue -a -r --states=all -h -j $ids -O "$F" > squeue_kiln_early.txt
squeue -a --states=all -j $ids > squeue_default_early.txt
squeue -a -r --states=all -j $ids -o '%i %t %T %r' > squeue_short_codes_early.txt
for j in $arr $rq $tl; do scontrol -o show job $j; done > scontrol_oneline_early.txt
scontrol show job $arr > scontrol_multiline_array_early.txt
scancel $run $held
sleep 100
squeue -a -r --states=all -h -j $ids -O "$F" > squeue_kiln_final.txt
squeue -a --states=all -j $ids > squeue_default_final.txt
squeue -a -r --states=all -j $ids -o '%i %t %T %r' > squeue_short_codes_final.txt
for j in $ok $fail $arr $run $held $tl $dep $depk $rq $sig; do scontrol -o show job $j; done > scontrol_oneline_final.txt
squeue --json > squeue_final.json
scontrol show config > scontrol_show_config.txt
echo done > DONE
