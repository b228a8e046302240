#!/usr/bin/env bash
# Stop the one-node cluster of scripts/start-slurm.sh: slurmd, slurmctld, then munged.
# Only the daemons named in their pid files are signalled; safe to run when none runs.
set -euo pipefail

stop() { # stop NAME PIDFILE
    local pid
    [ -s "$2" ] || return 0
    pid="$(cat "$2")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop-slurm: $1 (pid $pid) did not stop" >&2
            return 1
        fi
        echo "stop-slurm: stopped $1 (pid $pid)" >&2
    fi
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
