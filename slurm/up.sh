#!/usr/bin/env bash
# slurm/up.sh - idempotent single-node Slurm 22.05 (Debian 12) + munge [+ MariaDB/slurmdbd for sacct], no systemd,
# no cgroups: installs what is missing, rewrites configs (restarting our daemons if they changed), starts what is not
# running, waits until the node is idle. Root. SLURM_PREFIX=/tmp/slurm-local (state, logs, pids, DB) SLURM_PARTITION=debug
# SLURM_ACCOUNTING=1 (0: no slurmdbd, so no sacct: submitit never sees a cancelled job end) SLURM_DB_PORT=3306 (127.0.0.1).
# Full reset: slurm/down.sh; rm -rf $SLURM_PREFIX (then use fresh submitit folders: job ids restart at 1)
set -euo pipefail
PREFIX=${SLURM_PREFIX:-/tmp/slurm-local}; PART=${SLURM_PARTITION:-debug}
ACCT=${SLURM_ACCOUNTING:-1}; DBPORT=${SLURM_DB_PORT:-3306}; CONF=/etc/slurm/slurm.conf
t0=$(date +%s.%N); H=$(hostname -s)
log() { awk -v a="$(date +%s.%N)" -v b="$t0" -v m="$*" 'BEGIN{printf "[slurm/up %5.1fs] %s\n", a-b, m}'; }
# running, and not a zombie (PID 1 here reaps exited daemons only every ~2 s)
alive() { [ -s "$1" ] && [ "$(sed 's/.*) //' /proc/"$(cat "$1")"/stat 2>/dev/null | cut -c1)" != Z ] \
          && kill -0 "$(cat "$1")" 2>/dev/null; }
waitfor() { for _ in $(seq 100); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
put() { # put <file> <mode>: install stdin there if different; return 0 if it changed
  local t; t=$(mktemp); cat >"$t"
  if cmp -s "$t" "$1"; then rm -f "$t"; return 1; fi
  install -D -m "$2" "$t" "$1"; rm -f "$t"; log "wrote $1"; }

# 1. packages; Debian's policy-rc.d keeps the postinsts from starting any service
PKGS="slurmctld slurmd slurm-client munge"; [ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
if [ "$(dpkg-query -W -f='${db:Status-Status}\n' $PKGS 2>/dev/null | grep -c '^installed$')" != "$(wc -w <<<"$PKGS")" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  log "installed $PKGS (slurm $(dpkg-query -W -f='${Version}' slurmctld))"
fi
mkdir -p "$PREFIX"/{state,spool,log,run}; chmod 755 "$PREFIX"  # the mysql user reaches its datadir in it (mktemp -d: 700)

# 2. munge (the Debian postinst creates /etc/munge/munge.key)
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; }
if ! alive "$PREFIX/run/munged.pid" && ! munge -n </dev/null >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2*                       # stale socket/lock of a killed munged
  runuser -u munge -- /usr/sbin/munged
  waitfor '[ -s /run/munge/munged.pid ]'; cp /run/munge/munged.pid "$PREFIX/run/munged.pid"
  log "started munged"
fi
munge -n </dev/null | unmunge >/dev/null

# 3. accounting: private MariaDB (datadir in $PREFIX) + slurmdbd on 127.0.0.1:6819
if [ "$ACCT" = 1 ]; then
  DB=$PREFIX/mysql; DBRUN=$PREFIX/mysql-run; install -d -o mysql -g mysql "$DB" "$DBRUN"
  [ -d "$DB/mysql" ] || mariadb-install-db --user=mysql --datadir="$DB" --skip-test-db \
      --auth-root-authentication-method=socket >"$PREFIX/log/mariadb-install.log" 2>&1
  if ! alive "$DBRUN/mysqld.pid"; then
    setsid nohup /usr/sbin/mariadbd --user=mysql --datadir="$DB" --socket="$DBRUN/mysqld.sock" \
      --pid-file="$DBRUN/mysqld.pid" --bind-address=127.0.0.1 --port="$DBPORT" --skip-name-resolve \
      --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 --log-error="$PREFIX/log/mariadb.log" \
      </dev/null >/dev/null 2>&1 &
    waitfor "mariadb --socket=$DBRUN/mysqld.sock -u root -e 'SELECT 1'"; log "started mariadbd"
  fi
  mariadb --socket="$DBRUN/mysqld.sock" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' \
    IDENTIFIED BY 'slurmdb'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  if put /etc/slurm/slurmdbd.conf 0600 <<EOF && alive "$PREFIX/run/slurmdbd.pid"; then
AuthType=auth/munge
DbdHost=$H
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$PREFIX/run/slurmdbd.pid
LogFile=$PREFIX/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurmdb
StorageLoc=slurm_acct_db
EOF
    kill "$(cat "$PREFIX/run/slurmdbd.pid")"; waitfor "! alive $PREFIX/run/slurmdbd.pid"
  fi
  alive "$PREFIX/run/slurmdbd.pid" || { /usr/sbin/slurmdbd; log "started slurmdbd"; }
  waitfor '(exec 3<>/dev/tcp/127.0.0.1/6819)'
  ACCT_LINES=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nJobAcctGatherType=jobacct_gather/linux'
else
  ACCT_LINES=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
fi

# 4. slurm.conf: node line from `slurmd -C`, RealMemory lowered to 90% so the node is never drained
NODE=$(slurmd -C | head -1 | awk '{for(i=1;i<=NF;i++) if($i~/^RealMemory=/){split($i,a,"=");$i="RealMemory="int(a[2]*0.9)} print}')
if put "$CONF" 0644 <<EOF; then
ClusterName=local
SlurmctldHost=${H}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
# requeued jobs may start again only after cred_expire s (default 120); needs a daemon restart
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/none
MailProg=/bin/true
# reject (instead of pending forever) jobs asking for more than the node has
EnforcePartLimits=ALL
MpiDefault=none
SchedulerType=sched/backfill
# schedule as soon as the node frees up (~1 s submit-to-done instead of ~3 s)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
KillWait=5
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PART Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  for d in slurmd slurmctld; do alive "$PREFIX/run/$d.pid" && kill "$(cat "$PREFIX/run/$d.pid")"; done
  waitfor "! alive $PREFIX/run/slurmd.pid && ! alive $PREFIX/run/slurmctld.pid"
fi

# 5. slurmctld (registering the cluster in slurmdbd first), slurmd
if ! alive "$PREFIX/run/slurmctld.pid"; then
  if [ "$ACCT" = 1 ] && ! sacctmgr -n -P show cluster format=cluster | grep -qx local; then
    sacctmgr -i add cluster local >/dev/null; log "registered cluster 'local'"
  fi
  /usr/sbin/slurmctld; log "started slurmctld"
fi
alive "$PREFIX/run/slurmd.pid" || { /usr/sbin/slurmd; log "started slurmd"; }

# 6. wait until the node is idle (resume it if it came back down/drained)
for _ in $(seq 120); do
  case "$(sinfo -h -N -n "$H" -o %T 2>/dev/null)" in
    idle|mixed|allocated) log "node $H ready"; sinfo; exit 0 ;;
    down*|drain*) scontrol update NodeName="$H" State=RESUME 2>/dev/null || true ;;
  esac; sleep 0.5
done
echo "slurm/up.sh: node $H not idle after 60 s; see $PREFIX/log" >&2; exit 1
