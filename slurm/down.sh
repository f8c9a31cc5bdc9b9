#!/usr/bin/env bash
# slurm/down.sh - stop the daemons slurm/up.sh started, by their pid files only.
# KEEP_JOBS=1 skips cancelling the (private, single-node) cluster's jobs first.
set -uo pipefail
PREFIX=${SLURM_PREFIX:-/tmp/slurm-local}
# running and not a zombie (PID 1 here reaps exited daemons only every ~2 s)
running() { [ "$(sed 's/.*) //' /proc/"$1"/stat 2>/dev/null | cut -c1)" != Z ] && kill -0 "$1" 2>/dev/null; }
stop() {  # stop <pidfile> <expected exe>
  local f=$1 exe=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  # /usr/sbin/slurmctld and slurmd are alternatives symlinks (-> slurm*-wlm): compare resolved paths
  if running "$pid" && [ "$(readlink -f /proc/"$pid"/exe)" = "$(readlink -f "$exe")" ]; then
    kill "$pid"
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -9 "$pid"
    echo "stopped $(basename "$exe") pid $pid"
  fi
  rm -f "$f"
}
if [ "${KEEP_JOBS:-0}" != 1 ] && [ -s "$PREFIX/run/slurmctld.pid" ] && command -v scancel >/dev/null; then
  scancel --full --quiet $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop "$PREFIX/run/slurmd.pid" /usr/sbin/slurmd
stop "$PREFIX/run/slurmctld.pid" /usr/sbin/slurmctld
stop "$PREFIX/run/slurmdbd.pid" /usr/sbin/slurmdbd
stop "$PREFIX/mysql-run/mysqld.pid" /usr/sbin/mariadbd
stop "$PREFIX/run/munged.pid" /usr/sbin/munged
exit 0
