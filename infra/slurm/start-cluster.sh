#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI, tests and benchmarks.
#
#   sudo infra/slurm/start-cluster.sh        (as root; idempotent, about 5-20 s)
#
# Installs (if missing) Debian's munge, slurm-wlm and slurmdbd, writes the configuration
# below, and starts munged, slurmdbd (accounting in the machine's MariaDB, database
# `slurm_acct_db`, root without password on 127.0.0.1), slurmctld and slurmd, then waits
# until the node takes jobs. A second call with the cluster up and the configuration
# unchanged returns at once; a changed configuration restarts the daemons.
#
# Choices, for a cluster that must run without cgroups inside a container:
# - proctrack/linuxproc and task/none (no cgroup plugins); memory limits are enforced
#   by jobacct_gather polling every second (OverMemoryKill): a job above its --mem is
#   killed and ends OUT_OF_MEMORY.
# - The node declares CCAT_SLURM_CPUS (16) CPUs and CCAT_SLURM_MEMORY_MB (16000) MB
#   whatever the hardware (SlurmdParameters=config_overrides), so that tests and
#   benchmarks can run many small jobs side by side on a two-core machine.
# - KillWait=2 and OverTimeLimit=0: a job over its --time is stopped promptly (TIMEOUT).
# - One partition `debug` (default) and an accounting account `ccat` for root.
set -euo pipefail

CLUSTER=ccat
CPUS="${CCAT_SLURM_CPUS:-16}"
MEMORY_MB="${CCAT_SLURM_MEMORY_MB:-16000}"
NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm

log() { echo "[slurm] $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "start-cluster.sh must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v munged >/dev/null; then
    log "installing munge, slurm-wlm and slurmdbd from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurm-wlm slurmdbd >/dev/null
fi

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge
chown munge:munge /run/munge
chmod 0755 /run/munge

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/slurm.conf" <<EOF
# Written by infra/slurm/start-cluster.sh (single-node cluster for CI and tests).
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
KillWait=2
OverTimeLimit=0
MinJobAge=600
MaxArraySize=100001
MaxJobCount=200000
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$tmp/slurmdbd.conf" <<EOF
# Written by infra/slurm/start-cluster.sh: accounting in the machine's MariaDB.
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=root
StorageLoc=slurm_acct_db
EOF
echo "# No cgroups in this single-node cluster (see slurm.conf)." >"$tmp/cgroup.conf"

changed=0
for f in slurm.conf slurmdbd.conf cgroup.conf; do
    if ! cmp -s "$tmp/$f" "$CONF_DIR/$f"; then
        install -m 0644 "$tmp/$f" "$CONF_DIR/$f"
        changed=1
    fi
done
chmod 0600 "$CONF_DIR/slurmdbd.conf"

running() { pgrep -x "$1" >/dev/null; }

node_ready() {
    local state
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

if [ "$changed" = 0 ] && running munged && running slurmdbd && running slurmctld \
    && running slurmd && node_ready; then
    log "cluster $CLUSTER already up on $NODE"
    exit 0
fi

if [ "$changed" = 1 ]; then
    log "configuration changed: restarting the daemons"
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x slurmdbd || true
    for _ in $(seq 50); do
        running slurmd || running slurmctld || running slurmdbd || break
        sleep 0.1
    done
fi

if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! running munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi

if ! running slurmdbd; then
    log "starting slurmdbd (MariaDB database slurm_acct_db)"
    /usr/sbin/slurmdbd
fi
for _ in $(seq 100); do
    sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.2
done
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! sacctmgr -n -P list account format=account | grep -qx ccat; then
    sacctmgr -i add account ccat cluster="$CLUSTER" description=ccat organization=ccat >/dev/null
    sacctmgr -i add user root account=ccat cluster="$CLUSTER" >/dev/null
fi

if ! running slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
if ! running slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi

for _ in $(seq 150); do
    if node_ready; then
        log "cluster $CLUSTER up: node $NODE, $CPUS CPUs, $MEMORY_MB MB"
        exit 0
    fi
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    if [[ "$state" == down* || "$state" == drain* ]]; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.2
done
echo "SLURM node $NODE did not become ready; see $LOG_DIR/*.log" >&2
sinfo >&2 || true
exit 1
