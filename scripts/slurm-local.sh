#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for kiln-hpc's integration tests and the
# sweep_slurm example.
#
#   scripts/slurm-local.sh up       install (when root and missing), configure, start, wait for idle
#   scripts/slurm-local.sh down     stop the daemons
#   scripts/slurm-local.sh status   print sinfo and the daemons' pids
#
# The configuration is Debian's Slurm with no accounting, proctrack/linuxproc and task/none (no
# cgroups, so it runs in containers), select/cons_tres, and a long MinJobAge so finished jobs stay
# visible to squeue and scontrol. Everything lives under $KILN_SLURM_DIR (default
# /var/lib/kiln-slurm); /etc/slurm/slurm.conf is written only when it is absent or was written
# by this script.
set -euo pipefail

dir=${KILN_SLURM_DIR:-/var/lib/kiln-slurm}
conf=/etc/slurm/slurm.conf
marker="# written by kiln scripts/slurm-local.sh"

log() { echo "slurm-local: $*" >&2; }
die() {
    log "$*"
    exit 1
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || die "Slurm is not installed and this is not root: install slurmctld slurmd slurm-client munge"
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null; }
}

configure() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    ((cpus >= 8)) || cpus=8
    # Leave 1 GiB to the machine; slurmd refuses to register a node claiming more than it has.
    mem_mb=$(($(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo) - 1024))
    mkdir -p "$dir"/{state,spool,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
    if [[ -e $conf ]] && ! grep -qF "$marker" "$conf"; then
        die "$conf exists and was not written by this script; refusing to overwrite it"
    fi
    cat >"$conf.tmp" <<EOF
$marker
ClusterName=kiln
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again cred_expire + 1 seconds after it left (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=86400
MaxJobCount=100000
MaxArraySize=1001
KillWait=5
OverTimeLimit=0
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
JobRequeue=1
MpiDefault=none
MailProg=/bin/true
DefMemPerCPU=256
# Claim at least 8 CPUs whatever the machine has, so that throttles and arrays show concurrency.
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$conf.tmp" "$conf"
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "generating a munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    if ! pgrep -x munged >/dev/null; then
        log "starting munged"
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- munged || munged --force
        else
            munged --force
        fi
    fi
    if ! running "$dir/slurmctld.pid"; then
        log "starting slurmctld"
        slurmctld -c 2>>"$dir/log/start.log" || slurmctld 2>>"$dir/log/start.log"
    fi
    if ! running "$dir/slurmd.pid"; then
        log "starting slurmd"
        slurmd 2>>"$dir/log/start.log"
    fi
}

wait_idle() {
    local host state
    host=$(hostname -s)
    for _ in $(seq 1 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)
        case $state in
            idle | mixed | allocated)
                log "node $host is $state"
                return 0
                ;;
            down* | drain* | fail*)
                scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    log "the node did not become idle; last state: ${state:-none}"
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    return 1
}

stop() {
    local f
    for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if running "$f"; then
            kill "$(cat "$f")"
        fi
    done
    for _ in $(seq 1 50); do
        running "$dir/slurmd.pid" || running "$dir/slurmctld.pid" || break
        sleep 0.1
    done
}

case ${1:-} in
    up)
        install
        configure
        start
        wait_idle
        ;;
    down)
        stop
        ;;
    status)
        running "$dir/slurmctld.pid" && echo "slurmctld: pid $(cat "$dir/slurmctld.pid")" || echo "slurmctld: stopped"
        running "$dir/slurmd.pid" && echo "slurmd: pid $(cat "$dir/slurmd.pid")" || echo "slurmd: stopped"
        sinfo
        ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
