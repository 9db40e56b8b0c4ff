#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying the SLURM path
# (hydra/launcher=slurm) without a cluster. Needs root and Debian/Ubuntu packages (installed
# here if missing); no systemd needed: every daemon is started by hand.
#
#   scripts/slurm_local.sh start    install if needed, configure, start munge/slurmctld/slurmd,
#                                   wait until the node is idle; prints the PATH line to use
#   scripts/slurm_local.sh stop     stop the daemons
#   scripts/slurm_local.sh status   sinfo
#
# Partition "debug" (default), node "localhost" with this machine's CPUs and memory.
# Accounting is off, so `sacct` fails; submitit needs it to see how a job ended. The script
# writes a stand-in (answering submitit's one query from squeue) to $LLMFT_SLURM_BIN
# (default /opt/llmft-slurm/bin): put that directory first on PATH.
set -euo pipefail

BIN_DIR="${LLMFT_SLURM_BIN:-/opt/llmft-slurm/bin}"
CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
LOGS=/var/log/slurm

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm_local.sh: needs root" >&2; exit 3; }; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=60 slurmctld slurmd slurm-client munge \
        >/dev/null 2>&1 || { apt-get update -o DPkg::Lock::Timeout=60 >/dev/null 2>&1 &&
        apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=60 slurmctld slurmd slurm-client munge >/dev/null; }
}

configure() {
    mkdir -p "$CONF_DIR" "$STATE" "$LOGS" /var/spool/slurmd /run/slurm /run/munge
    chown slurm:slurm "$STATE" "$LOGS" /run/slurm
    chown munge:munge /run/munge && chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then mungekey --create >/dev/null 2>&1 || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
    # the node's hardware exactly as slurmd sees it, or the node drains
    local hw
    hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
    cat > "$CONF_DIR/slurm.conf.new" <<EOF
ClusterName=llmft-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=slurm
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
KillWait=2
EnforcePartLimits=ALL
SchedulerParameters=bf_interval=2,sched_interval=2
MinJobAge=3600
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
}

write_sacct() {
    mkdir -p "$BIN_DIR"
    # submitit asks `sacct -o JobID,State,NodeList --parsable2 -j ID`; answer it from squeue
    cat > "$BIN_DIR/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct stand-in for a cluster without accounting (written by llmft's scripts/slurm_local.sh)
ids=""; prev=""
for a in "$@"; do [ "$prev" = "-j" ] && ids="$a"; prev="$a"; done
if [ -n "$ids" ] && [[ " $* " == *" --parsable2 "* ]]; then
    echo "JobID|State|NodeList"
    squeue -h -t all -j "$ids" -o '%i|%T|%N' 2>/dev/null || true
    exit 0
fi
exec /usr/bin/sacct "$@"
EOF
    chmod +x "$BIN_DIR/sacct"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    need_root
    install
    write_sacct
    if ! sinfo -h >/dev/null 2>&1; then
        configure
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged --force
        running /run/slurm/slurmctld.pid || slurmctld
        running /run/slurm/slurmd.pid || slurmd -N localhost
    fi
    for _ in $(seq 1 60); do
        state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
        if [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]; then
            echo "SLURM up: node localhost $state, partition debug. Use: export PATH=$BIN_DIR:\$PATH"
            return 0
        fi
        [[ "$state" == drain* ]] && scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
        sleep 0.5
    done
    echo "slurm_local.sh: the node did not become idle; see $LOGS/" >&2
    exit 1
}

stop() {
    for pid in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        running "$pid" && kill "$(cat "$pid")" || true
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
