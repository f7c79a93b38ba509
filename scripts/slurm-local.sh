#!/usr/bin/env bash
# Usage: scripts/slurm-local.sh start|stop DIR
#
# Brings up (start) or tears down (stop) a real single-node Slurm cluster on loopback for
# the tests: munged, slurmctld and slurmd from Debian's packages (scripts/setup.sh
# --tests installs them), with config, state, spool, sockets and logs under DIR; no systemd, no
# cgroups. After `start`, point clients at it with `export SLURM_CONF=DIR/slurm.conf`.
#
# The node declares EVALMESH_SLURM_CPUS CPUs (default 8) whatever the machine has, so that
# a coordinator and several workers fit on a small machine, and EVALMESH_SLURM_GPUS GPUs
# (default 4, null devices standing in for them) so that the GPU templates of slurm/ are accepted
# as they are; evalmesh runs them with --device cpu. EVALMESH_SLURM_PORT (default 6817)
# and the next port are the daemons'. `stop` cancels the jobs first
# (slurmd leaves running jobs behind), then stops the daemons by PID.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf="$dir/slurm.conf"

stop_pid() { # name pidfile
    [ -f "$2" ] || return 0
    local pid
    pid=$(cat "$2")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
}

stop() {
    if [ -f "$conf" ] && [ -f "$dir/run/slurmctld.pid" ]; then
        SLURM_CONF="$conf" scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(SLURM_CONF="$conf" squeue --noheader --states=RUNNING,COMPLETING 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pid slurmd "$dir/run/slurmd.pid"
    stop_pid slurmctld "$dir/run/slurmctld.pid"
    stop_pid munged "$dir/run/munged.pid"
}

start() {
    for bin in munged slurmctld slurmd sbatch; do
        command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
        command -v "$bin" >/dev/null 2>&1 || {
            echo "slurm-local: $bin is not installed: run scripts/setup.sh --tests (it installs Debian's slurmctld, slurmd, slurm-client and munge)" >&2
            exit 1
        }
    done
    stop # a previous cluster in the same folder, whose jobs and node states are forgotten
    rm -rf "$dir/state" "$dir/spool" "$dir/dev"
    mkdir -p "$dir"/{munge,run,log,state,spool}
    # munged refuses keys that others can read, and sockets in folders others cannot enter.
    chmod 755 "$dir" "$dir/munge"
    if [ ! -f "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$dir/munge/munge.key"
    munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munge.seed" --force

    local host cpus gpus port
    host=$(hostname -s)
    cpus=${EVALMESH_SLURM_CPUS:-8}
    gpus=${EVALMESH_SLURM_GPUS:-4}
    port=${EVALMESH_SLURM_PORT:-6817}
    cat >"$conf" <<EOF
# A single-node cluster on loopback, written by scripts/slurm-local.sh.
ClusterName=evalmesh-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$(id -un)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
MailProg=/bin/true
MinJobAge=5
KillWait=5
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:$gpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm drops GPUs without device files: null devices stand in for them.
    mkdir -p "$dir/dev"
    for i in $(seq 0 $((gpus - 1))); do
        mknod -m 666 "$dir/dev/gpu$i" c 1 3
    done
    echo "NodeName=$host Name=gpu File=$dir/dev/gpu[0-$((gpus - 1))]" >"$dir/gres.conf"
    export SLURM_CONF="$conf" # slurmd finds gres.conf beside it
    slurmctld -i
    slurmd
    for _ in $(seq 100); do
        if [ "$(sinfo --noheader --format=%T 2>/dev/null)" = idle ]; then
            echo "slurm-local: up; export SLURM_CONF=$conf" >&2
            return 0
        fi
        sleep 0.1
    done
    echo "slurm-local: the node did not come up within 10 s; see $dir/log/" >&2
    tail -n 5 "$dir"/log/*.log >&2 || true
    stop
    exit 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
