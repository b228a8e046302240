#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (munge, slurmctld, slurmd), idempotently.
#
# Debian's slurm-wlm, munge and slurm-wlm-torque give a real scheduler with Slurm's sbatch
# and a Torque-compatible qsub/qstat: the integration tests and `fmnist-batch submit` run
# on it. The node carries one feature per node type of jobs/node_types.toml, so
# `--constraint=spr` and friends are satisfiable here. Safe to run twice; needs root.
# Exits non-zero with the reason when the cluster cannot start.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PROJECT="$(dirname "$HERE")"
CONF=/etc/slurm/slurm.conf
MARKER="# written by fmnist-batch scripts/start-slurm.sh"
TIMEOUT="${SLURM_START_TIMEOUT:-60}"

fail() {
    echo "start-slurm: $*" >&2
    exit 1
}

alive() { # alive PIDFILE: the process named in PIDFILE runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

[ "$(id -u)" = 0 ] || fail "needs root (it starts munged, slurmctld and slurmd)"
for tool in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || fail "$tool not found: apt-get install slurm-wlm slurm-wlm-torque munge"
done
id munge >/dev/null 2>&1 || fail "no 'munge' user: reinstall the munge package"
id slurm >/dev/null 2>&1 || fail "no 'slurm' user: reinstall the slurm-wlm package"

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi
for _ in $(seq 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n | unmunge >/dev/null || fail "munge credentials do not round-trip (see /var/log/munge/munged.log)"

# ---------------------------------------------------------------- slurm.conf
HOST="$(hostname -s)"
NODE_LINE="$(slurmd -C | head -n 1)" # NodeName=... CPUs=... as this machine really is
[[ "$NODE_LINE" == NodeName=* ]] || fail "slurmd -C did not describe this node: $NODE_LINE"
NODE_LINE="${NODE_LINE/NodeName=$(echo "$NODE_LINE" | sed 's/NodeName=\([^ ]*\).*/\1/')/NodeName=$HOST}"
FEATURES="$(python3 - "$PROJECT/jobs/node_types.toml" 2>/dev/null <<'PY' || echo skl,clx,icx,spr,local
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    print(",".join(tomllib.load(handle)["node_types"]))
PY
)"

install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld /var/log/slurm
install -d -m 0755 /var/lib/slurm/slurmd /etc/slurm
NEW_CONF="$(cat <<CONF
$MARKER
ClusterName=fmnist
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Schedule as soon as a dependency is met; cancel jobs whose dependency can never be met
# (afterok on a failed job) instead of leaving them pending forever.
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000,bf_interval=1
DependencyParameters=kill_invalid_depend
# Finished jobs stay visible to scontrol/qstat for an hour: \`fmnist-batch status\` reads them.
MinJobAge=3600
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$NODE_LINE Features=$FEATURES State=UNKNOWN
PartitionName=batch Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
)"
CHANGED=0
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    echo "start-slurm: keeping the existing $CONF (not written by this script)" >&2
elif [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    CHANGED=1
fi

# ---------------------------------------------------------------- daemons
if ! alive /run/slurmctld.pid; then
    slurmctld || fail "slurmctld did not start: $(tail -n 3 /var/log/slurm/slurmctld.log 2>/dev/null)"
elif [ "$CHANGED" = 1 ]; then
    scontrol reconfigure || true
fi
if ! alive /run/slurmd.pid; then
    slurmd || fail "slurmd did not start: $(tail -n 3 /var/log/slurm/slurmd.log 2>/dev/null)"
fi

# ---------------------------------------------------------------- wait for the node
state=""
for _ in $(seq "$((TIMEOUT * 2))"); do
    state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)"
    case "$state" in
    idle | mix | alloc | comp)
        echo "start-slurm: node $HOST is $state (features $FEATURES)" >&2
        exit 0
        ;;
    down* | drain* | drng*)
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    sleep 0.5
done
fail "node $HOST is '${state:-not reported}' after ${TIMEOUT}s; slurmctld.log: $(tail -n 2 /var/log/slurm/slurmctld.log 2>/dev/null); slurmd.log: $(tail -n 2 /var/log/slurm/slurmd.log 2>/dev/null)"
