#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and for trying the scoring scripts:
#
#   eval "$(scripts/slurm/local-cluster.sh start /tmp/slurm-test)"   # prints `export SLURM_CONF=...`
#   sbatch --array=0-3 --wait job.sh
#   scripts/slurm/local-cluster.sh stop /tmp/slurm-test               # safe to call twice
#   scripts/slurm/local-cluster.sh env /tmp/slurm-test                # the export lines again
#   scripts/slurm/local-cluster.sh install /tmp/slurm-test            # only the packages (test setup)
#
# `start` installs Debian's slurm-wlm and munge with apt-get when they are missing (needs
# root; daemons are kept from starting during the install), then writes into STATE_DIR:
#
#   etc/slurm.conf, etc/cgroup.conf   one node (this machine's CPUs and memory, from
#                                     `slurmd -C`), one partition `local`, plugins that need
#                                     neither systemd nor cgroups (proctrack/linuxproc,
#                                     task/none, jobacct_gather/none, select/cons_tres with
#                                     CR_CPU: one job per CPU at a time)
#   munge/munge.key, munge/munge.socket   a private munged; slurm.conf's AuthInfo names its
#                                     socket, so no /etc/munge or /run/munge is used
#   spool/, log/, run/                state, daemon logs (log/*.log), pid files
#
# and starts munged, slurmctld and slurmd as the current user (root), listening on
# 127.0.0.1 only. The ports are the first free pair from $LOCAL_SLURM_PORT (default 6817:
# slurmctld on it, slurmd on the next one). It waits (at most $LOCAL_SLURM_WAIT seconds,
# default 60) until `sinfo` reports the node idle; on failure it prints the reason and the
# tail of each daemon's log on stderr and exits non-zero. Only the export lines go to stdout.
#
# Outside STATE_DIR it uses only the packages and a lock file that serialises concurrent
# starts ($LOCAL_SLURM_LOCK, default /tmp/allconv-local-slurm.lock). The munge package's
# own /etc/munge/munge.key is left alone and unused. STATE_DIR must not contain blanks,
# commas, '=', quotes or '#' (slurm.conf cannot hold them).
#
# `stop` cancels the cluster's jobs, stops the three daemons by their pid files, and kills
# any job step (slurmstepd, started with this cluster's SLURM_CONF) left behind.
#
# Finished jobs stay visible to `scontrol show job` for $LOCAL_SLURM_MIN_JOB_AGE seconds
# (default 3600). There is no accounting database, so `sacct` answers nothing useful here;
# use `scontrol show job -o ID` for a job's state. A requeued job may start again
# $LOCAL_SLURM_CRED_EXPIRE + 1 seconds later (default 10, Slurm's minimum 5).
set -euo pipefail

usage() { echo "usage: $0 install|start|stop|env|status STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd="$1"
state="$(realpath -m "$2")"
case "$state" in *[[:space:],=\"\'\#]*)
  echo "local-cluster: STATE_DIR '$state' has a blank, comma, '=', quote or '#', which slurm.conf cannot hold" >&2
  exit 2 ;;
esac
conf="$state/etc/slurm.conf"
sock="$state/munge/munge.socket"

say() { echo "local-cluster: $*" >&2; }

print_env() {
  echo "export SLURM_CONF=$conf"
}

# --- stop ----------------------------------------------------------------------------------
stop_pidfile() { # NAME PIDFILE: TERM, wait up to 10 s, then KILL; only the pid in the file
  local name="$1" pf="$2" pid
  [ -s "$pf" ] || return 0
  pid="$(cat "$pf")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) did not stop in 10 s, killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pf"
}

descendants() { # PID: its children, grandchildren, ... (deepest last)
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done
}

do_stop() {
  # Jobs outlive slurmd (each runs under its own slurmstepd): cancel them while slurmctld
  # can still do it, and wait (at most 15 s) until they are gone.
  if alive "$state/run/slurmctld.pid" && [ -s "$conf" ]; then
    local ids
    ids="$(SLURM_CONF="$conf" squeue -h -o '%A' 2>/dev/null || true)"
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086 # one argument per job id
      SLURM_CONF="$conf" scancel $ids 2>/dev/null || true
      for _ in $(seq 1 30); do
        [ -z "$(SLURM_CONF="$conf" squeue -h -o '%A' 2>/dev/null || true)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_pidfile slurmd "$state/run/slurmd.pid" &
  stop_pidfile slurmctld "$state/run/slurmctld.pid" &
  wait
  # Whatever job step is left (slurmctld gone, or a step that did not end): the
  # slurmstepd processes that this cluster's slurmd started carry its SLURM_CONF.
  local p pid kids
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$conf" || continue
    kids="$(descendants "$pid")"
    say "killing job step $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) ($pid${kids:+ and its children})"
    # shellcheck disable=SC2086 # one argument per pid
    kill -9 "$pid" $kids 2>/dev/null || true
  done
  stop_pidfile munged "$state/run/munged.pid"
  rm -f "$sock" "$sock.lock"
}

# --- start ---------------------------------------------------------------------------------
install_packages() {
  local need="" p
  for p in slurmctld slurmd slurm-client munge; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  [ -z "$need" ] && return 0
  say "installing$need (Debian slurm-wlm, munge)"
  local sudo_="" made_policy=""
  [ "$(id -u)" = 0 ] || sudo_=sudo
  # Keep the packages' init scripts from starting a system munged/slurmd during the install
  # (policy-rc.d is Debian's switch for that; Docker images usually ship one already).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_ tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_ chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local ok=1 apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q)
  $sudo_ "${apt[@]}" install --no-install-recommends slurm-wlm munge >"$state/log/apt.log" 2>&1 || {
    $sudo_ "${apt[@]}" update >>"$state/log/apt.log" 2>&1 || true
    $sudo_ "${apt[@]}" install --no-install-recommends slurm-wlm munge >>"$state/log/apt.log" 2>&1 || ok=0
  }
  [ -n "$made_policy" ] && $sudo_ rm -f /usr/sbin/policy-rc.d
  if [ "$ok" != 1 ]; then
    say "apt-get install slurm-wlm munge failed:"; tail -n 20 "$state/log/apt.log" >&2; exit 1
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fail() {
  say "$*"
  local f
  for f in munged slurmctld slurmd; do
    if [ -s "$state/log/$f.log" ]; then
      echo "--- tail of $state/log/$f.log" >&2
      tail -n 25 "$state/log/$f.log" >&2
    fi
  done
  do_stop
  exit 1
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

do_start() {
  mkdir -p "$state/log"
  # One start at a time on this machine: apt-get and the choice of free ports must not race.
  # The daemons do not inherit the lock (9>&-).
  exec 9>"${LOCAL_SLURM_LOCK:-/tmp/allconv-local-slurm.lock}"
  flock -w 300 9 || fail "another local-cluster.sh start held ${LOCAL_SLURM_LOCK:-/tmp/allconv-local-slurm.lock} for 300 s"
  install_packages
  if alive "$state/run/slurmctld.pid" && alive "$state/run/slurmd.pid" && alive "$state/run/munged.pid"; then
    say "already running"
    print_env
    return 0
  fi
  do_stop # leftovers of a cluster that half-started or died
  mkdir -p "$state/etc" "$state/spool/ctld" "$state/spool/d" "$state/run" "$state/munge"
  chmod 711 "$state/munge"

  # munge: a private key and socket.
  if [ ! -s "$state/munge/munge.key" ]; then
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$state/munge/munge.key"
  # --force: the state directory may live under a group-writable parent (munged refuses such
  # paths otherwise); this cluster is a local test bed, not a security boundary.
  munged --force --socket="$sock" --key-file="$state/munge/munge.key" \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed" 2>>"$state/log/munged.log" 9>&- \
    || fail "munged did not start"

  # The node as slurmd sees it.
  local host node_line port
  host="$(hostname -s)"
  node_line="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=' || true)"
  [ -n "$node_line" ] || fail "slurmd -C printed no NodeName line"
  node_line="$(echo "$node_line" | sed -E "s/^NodeName=[^ ]+/NodeName=$host NodeAddr=127.0.0.1/")"

  port="${LOCAL_SLURM_PORT:-6817}"
  while ! { port_free "$port" && port_free "$((port + 1))"; }; do
    port=$((port + 2))
    [ "$port" -lt 65000 ] || fail "no free port pair from ${LOCAL_SLURM_PORT:-6817}"
  done

  cat >"$conf" <<EOF
# Written by scripts/slurm/local-cluster.sh: a one-node test cluster on this machine.
ClusterName=allconvlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits cred_expire+1 s before it may start again (default 120).
AuthInfo=socket=$sock,cred_expire=${LOCAL_SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroup delegation in a container: plugins that need neither.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# Schedule right after each submission and each job's end (default: batched every 3 s).
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=${LOCAL_SLURM_MIN_JOB_AGE:-3600}
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$node_line State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # Read by slurmd if a cgroup plugin were ever loaded; none of the plugins above loads one.
  cat >"$state/etc/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
  export SLURM_CONF="$conf"

  slurmctld -f "$conf" 2>>"$state/log/slurmctld.log" 9>&- || fail "slurmctld did not start"
  local t0
  t0="$(date +%s)"
  slurmd -f "$conf" -N "$host" 2>>"$state/log/slurmd.log" 9>&- || fail "slurmd did not start"

  local launched=$SECONDS deadline=$((SECONDS + ${LOCAL_SLURM_WAIT:-60})) st=""
  check_daemon() { # NAME: exited, or no pid file 5 s after the launch
    local pf="$state/run/$1.pid"
    if [ -s "$pf" ]; then
      kill -0 "$(cat "$pf")" 2>/dev/null || fail "$1 exited"
    elif [ $((SECONDS - launched)) -gt 5 ]; then
      fail "$1 wrote no pid file ($pf)"
    fi
  }
  while [ "$SECONDS" -lt "$deadline" ]; do
    check_daemon munged
    check_daemon slurmctld
    check_daemon slurmd
    st="$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)"
    # A recovered state file may say idle before this slurmd has registered: wait for it.
    # Jobs recovered from an earlier run of this STATE_DIR may hold the node (allocated).
    case "$st" in mixed|allocated|completing) st=idle ;; esac
    if [ "$st" = idle ]; then
      local started
      started="$(scontrol show node -o "$host" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)"
      started="$(date -d "$started" +%s 2>/dev/null || echo 0)"
      [ "$started" -ge $((t0 - 1)) ] || st="idle (slurmd not registered yet)"
    fi
    case "$st" in
      idle) print_env; say "node $host idle (slurmctld on 127.0.0.1:$port), state in $state"; return 0 ;;
      drain*|down*|inval*|fail*)
        fail "node $host is $st: $(scontrol show node "$host" 2>/dev/null | grep -o 'Reason=.*' || true)" ;;
    esac
    sleep 0.5
  done
  fail "node $host not idle after ${LOCAL_SLURM_WAIT:-60} s (sinfo says '${st:-nothing}')"
}

do_status() {
  local d
  for d in munged slurmctld slurmd; do
    if alive "$state/run/$d.pid"; then echo "$d running ($(cat "$state/run/$d.pid"))"; else echo "$d stopped"; fi
  done
}

case "$cmd" in
  install) mkdir -p "$state/log"; install_packages ;;
  start) do_start ;;
  stop) do_stop ;;
  env) print_env ;;
  status) do_status ;;
  *) usage ;;
esac
