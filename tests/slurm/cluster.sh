#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for `make test-slurm`.
#
#   tests/slurm/cluster.sh up      install (Debian packages) and start munge, MariaDB, slurmdbd,
#                                  slurmctld and slurmd; waits until the node is idle
#   tests/slurm/cluster.sh down    stop every daemon this script started (by its pid file)
#   tests/slurm/cluster.sh env     print the `export SLURM_CONF=...` line that clients need
#
# Idempotent: `up` on a running cluster only checks it; `down` on a stopped one does nothing.
# Everything lives under $SLURM_TEST_ROOT (default /tmp/alignment-slurm): configs, spool, state,
# logs and a private MariaDB on 127.0.0.1:$SLURM_TEST_DBPORT; the only thing outside it is a link
# /etc/slurm/slurm.conf -> $ROOT/etc/slurm.conf (removed by `down`), made only where no other SLURM
# config is there. Needs root (the daemons run as root, so jobs can
# write into the checkout). Exit status 77 means "cannot run here" (not root, no apt, packages
# unavailable): the caller turns it into a skip with the printed reason.
#
# Job accounting: snakemake-executor-plugin-slurm follows job states with `sacct`, which reads
# slurmdbd; slurmdbd stores into MariaDB (accounting_storage/slurmdbd). The node is declared with
# SlurmdParameters=config_overrides as 8 CPUs, 64 GB and one stand-in GPU (gres gpu:1 on
# /dev/null), so that the real profiles/slurm requests (up to 8 CPUs, 32 GB, --gpus=1 on partition
# gpu) are scheduled unchanged on a 2-core test machine; no cgroup enforces them
# (proctrack/linuxproc, task/none).
set -euo pipefail

ROOT=${SLURM_TEST_ROOT:-/tmp/alignment-slurm}
DBPORT=${SLURM_TEST_DBPORT:-3317}
CLUSTER=alignment
NODE=$(hostname -s)
CONF=$ROOT/etc/slurm.conf
PACKAGES=(munge slurmctld slurmd slurmdbd slurm-client mariadb-server)
export SLURM_CONF=$CONF

log() { echo "[slurm-cluster] $*" >&2; }
skip() {
  echo "SKIP: $*" >&2
  exit 77
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for _ in $(seq "$((limit * 4))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out after ${limit}s waiting for $what"
  return 1
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || skip "apt-get not found; install ${missing[*]} by hand"
  log "installing ${missing[*]}"
  apt-get update -qq >"$ROOT/log/apt.log" 2>&1 || skip "apt-get update failed (see $ROOT/log/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >>"$ROOT/log/apt.log" 2>&1 || skip "apt-get install ${missing[*]} failed (see $ROOT/log/apt.log)"
  # a package's postinst may start its daemon where an init system exists; ours run privately
}

write_configs() {
  mkdir -p "$ROOT"/{etc,spool/ctld,spool/d,run,log,db}
  cat >"$CONF" <<EOF
# Written by tests/slurm/cluster.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$ROOT/spool/ctld
SlurmdSpoolDir=$ROOT/spool/d
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6919
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=300
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=64000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
  # a GPU gres needs a device file: /dev/null stands in for the card (jobs see CUDA device 0;
  # the CPU build of torch finds no CUDA and the encoders fall back to the CPU)
  cat >"$ROOT/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
EOF
  cat >"$ROOT/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6919
SlurmUser=root
PidFile=$ROOT/run/slurmdbd.pid
LogFile=$ROOT/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurm-test
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ROOT/etc/slurmdbd.conf"
  # Clients inside jobs need the config at the default path: the plugin's job step strips every
  # SLURM_* variable (SLURM_CONF too) before its nested srun. Link it unless a real one is there.
  mkdir -p /etc/slurm
  if [[ ! -e /etc/slurm/slurm.conf || $(readlink /etc/slurm/slurm.conf) == "$CONF" ]]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    skip "/etc/slurm/slurm.conf belongs to another SLURM; not touching it"
  fi
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  [[ -s /etc/munge/munge.key ]] || /usr/sbin/mungekey --create --keyfile /etc/munge/munge.key
  chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  chmod 700 /etc/munge && chmod 600 /etc/munge/munge.key
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$ROOT/run/munged.pid" 2>/dev/null || true
  wait_for 10 munge bash -c 'munge -n | unmunge'
}

mysql_cli() { mariadb --protocol=tcp -h 127.0.0.1 -P "$DBPORT" -u root "$@"; }

start_mariadb() {
  if alive "$ROOT/run/mariadb.pid" && mysql_cli -e 'select 1' >/dev/null 2>&1; then return 0; fi
  if [[ ! -d $ROOT/db/mysql ]]; then
    log "initialising MariaDB in $ROOT/db"
    mariadb-install-db --user=root --datadir="$ROOT/db" --auth-root-authentication-method=normal \
      --skip-test-db >"$ROOT/log/mariadb-install.log" 2>&1
  fi
  log "starting MariaDB on 127.0.0.1:$DBPORT"
  mariadbd --user=root --datadir="$ROOT/db" --bind-address=127.0.0.1 --port="$DBPORT" \
    --socket="$ROOT/run/mariadb.sock" --pid-file="$ROOT/run/mariadb.pid" \
    --log-error="$ROOT/log/mariadb.log" --innodb-buffer-pool-size=64M \
    --skip-name-resolve >/dev/null 2>&1 &
  wait_for 60 MariaDB mysql_cli -e 'select 1'
  mysql_cli -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  if alive "$ROOT/run/slurmdbd.pid"; then return 0; fi
  log "starting slurmdbd"
  /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -n list cluster format=cluster | grep -qw "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurm() {
  if ! alive "$ROOT/run/slurmctld.pid"; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
  fi
  wait_for 30 slurmctld scontrol ping
  if ! alive "$ROOT/run/slurmd.pid"; then
    log "starting slurmd"
    /usr/sbin/slurmd
  fi
  scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  wait_for 60 "node $NODE to be idle" bash -c "sinfo -h -n $NODE -o %t | grep -qE '^(idle|mix|alloc)'"
  # an account for jobs, and the submitting user in it (what a real site's admin sets up)
  sacctmgr -i -n list account format=account | grep -qw alignment ||
    sacctmgr -i add account alignment cluster="$CLUSTER" description=tests >/dev/null
  sacctmgr -i -n list user "$(id -un)" format=user | grep -qw "$(id -un)" ||
    sacctmgr -i add user "$(id -un)" account=alignment cluster="$CLUSTER" >/dev/null
}

up() {
  [[ $(id -u) == 0 ]] || skip "needs root to install and run the SLURM daemons"
  mkdir -p "$ROOT/log"
  install_packages
  for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || skip "$cmd not found after install"
  done
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  log "cluster $CLUSTER up: $(sinfo -h -o '%P %t %c CPUs %m MB %G' | tr '\n' ';')"
  echo "export SLURM_CONF=$CONF"
}

stop_pid() { # stop_pid NAME PIDFILE
  local pidfile=$2
  if alive "$pidfile"; then
    local pid
    pid=$(cat "$pidfile")
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  [[ -f $CONF ]] || return 0
  # jobs of the test cluster only (our SLURM_CONF), then the daemons in reverse order
  scancel --state=PENDING,RUNNING -u "$(id -un)" >/dev/null 2>&1 || true
  stop_pid slurmd "$ROOT/run/slurmd.pid"
  stop_pid slurmctld "$ROOT/run/slurmctld.pid"
  stop_pid slurmdbd "$ROOT/run/slurmdbd.pid"
  stop_pid MariaDB "$ROOT/run/mariadb.pid"
  # munged is shared by any SLURM on this machine: stop it only if this script started it
  stop_pid munged "$ROOT/run/munged.pid"
  [[ $(readlink /etc/slurm/slurm.conf) == "$CONF" ]] && rm -f /etc/slurm/slurm.conf
  return 0
}

case ${1:-} in
up) up ;;
down) down ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
  echo "usage: $0 up|down|env" >&2
  exit 64
  ;;
esac
