#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on this Debian / Ubuntu machine, without systemd, for the cluster
# tests (tests/cluster/) and for trying `snakemake --profile slurm` on a workstation.
#
#   sudo bash scripts/slurm-local.sh          # install (apt) + configure + start; idempotent
#   sudo bash scripts/slurm-local.sh status   # is it up?
#   sudo bash scripts/slurm-local.sh stop     # stop the daemons (configuration and packages stay)
#
# What it sets up: packages slurmctld slurmd slurm-client munge (Debian's slurm-wlm, 22.05 on bookworm);
# a munge key; /etc/slurm/slurm.conf with one node (this host, CPUs and memory as `slurmd -C` reports
# them, no GPUs) in two partitions `cpu` (default) and `gpu` over the same node, so profiles/slurm's
# per-rule partitions resolve; select/cons_tres, proctrack/linuxproc, task/none, no accounting database
# (hence `slurm-status-command: squeue` in profiles/slurm). The daemons are started directly (no
# systemd); their logs go to /var/log/slurm/. Re-running the script restarts nothing that is healthy.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/lib/slurm
LOGS=/var/log/slurm
RUN=/run/slurm
CLUSTER=visd-local
HOST=$(hostname -s)
# MinJobAge: how long finished jobs stay visible to squeue. The Snakemake Slurm executor polls squeue
# (no accounting database here), so a job must not vanish between two polls.
MIN_JOB_AGE=600

say() { printf '[slurm-local] %s\n' "$*"; }
die() { printf '[slurm-local] error: %s\n' "$*" >&2; exit 1; }

teardown_help() {
  cat <<EOF
[slurm-local] tear down:
  sudo bash $0 stop                                    # stop slurmctld, slurmd, munged
  sudo rm -rf $CONF_DIR $STATE $LOGS $RUN              # remove configuration and state
  sudo apt-get purge -y slurmctld slurmd slurm-client munge   # remove the packages
EOF
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

stop_daemon() {  # name pidfile
  if pid_alive "$2"; then
    say "stopping $1 (pid $(cat "$2"))"
    kill "$(cat "$2")"
    for _ in $(seq 50); do pid_alive "$2" || break; sleep 0.2; done
  fi
  rm -f "$2"
}

status() {
  local ok=0
  for d in "munged:/run/munge/munged.pid" "slurmctld:$RUN/slurmctld.pid" "slurmd:$RUN/slurmd.pid"; do
    if pid_alive "${d#*:}"; then say "${d%%:*} running (pid $(cat "${d#*:}"))"; else say "${d%%:*} not running"; ok=1; fi
  done
  command -v sinfo >/dev/null && sinfo -N -l 2>&1 | sed 's/^/[slurm-local]   /' || true
  return $ok
}

case "${1:-up}" in
  status) status; exit $? ;;
  stop)
    stop_daemon slurmd "$RUN/slurmd.pid"
    stop_daemon slurmctld "$RUN/slurmctld.pid"
    stop_daemon munged /run/munge/munged.pid
    teardown_help
    exit 0 ;;
  up) ;;
  *) die "unknown command '$1' (use: up | status | stop)" ;;
esac

[[ $(id -u) == 0 ]] || die "run as root (sudo bash $0): it installs packages and starts system daemons"

# ------------------------------------------------------------------ packages
missing=()
for p in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: the packages' maintainer scripts must not try to start services (no systemd here)
  had_policy=0; [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
  if ((!had_policy)); then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((had_policy)) || rm -f /usr/sbin/policy-rc.d
fi
getent passwd slurm >/dev/null || die "the slurm packages did not create the 'slurm' user"
getent passwd munge >/dev/null || die "the munge package did not create the 'munge' user"

# ------------------------------------------------------------------ munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! pid_alive /run/munge/munged.pid || ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
  stop_daemon munged /run/munge/munged.pid
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi
munge -n </dev/null | unmunge >/dev/null || die "munge does not work; see /var/log/munge/munged.log"

# ------------------------------------------------------------------ slurm.conf
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS" "$RUN"
chown -R slurm:slurm "$STATE/slurmctld" "$LOGS" "$RUN"
# The node line as slurmd measures it (CPUs, sockets, cores, threads, RealMemory); memory rounded down a
# little so the node is never drained for having less memory than configured.
node=$(slurmd -C | head -n1)
[[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
node=$(sed -e "s/NodeName=[^ ]*/NodeName=$HOST/" -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$node")
new_conf=$(cat <<EOF
# Written by scripts/slurm-local.sh: a single-node cluster for tests. Re-running the script rewrites it.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=10
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=120
SlurmdTimeout=300
$node State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF
)
changed=0
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
  say "writing $CONF ($node)"
  printf '%s\n' "$new_conf" >"$CONF"
  changed=1
fi
# the Debian packages read /etc/slurm/slurm.conf; older layouts used /etc/slurm-llnl
[[ -d /etc/slurm-llnl && ! -L /etc/slurm-llnl/slurm.conf ]] && ln -sf "$CONF" /etc/slurm-llnl/slurm.conf

# ------------------------------------------------------------------ daemons
if ((changed)); then
  stop_daemon slurmd "$RUN/slurmd.pid"
  stop_daemon slurmctld "$RUN/slurmctld.pid"
fi
if ! pid_alive "$RUN/slurmctld.pid"; then
  say "starting slurmctld"
  /usr/sbin/slurmctld -i   # -i: ignore state files from a different configuration
fi
if ! pid_alive "$RUN/slurmd.pid"; then
  say "starting slurmd"
  /usr/sbin/slurmd
fi

for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
  [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
  if [[ $state == down* || $state == drain* ]]; then scontrol update nodename="$HOST" state=resume 2>/dev/null || true; fi
  sleep 1
done
[[ $state == idle* || $state == mixed* || $state == allocated* ]] ||
  die "node $HOST is '${state:-unknown}' (see $LOGS/slurmctld.log and $LOGS/slurmd.log)"

say "single-node Slurm '$CLUSTER' is up: node $HOST ($state), partitions cpu (default) and gpu"
sinfo | sed 's/^/[slurm-local]   /'
say "try: srun -N1 hostname    ·    snakemake --cores all --profile slurm (from the repository root)"
teardown_help
