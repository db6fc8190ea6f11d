# Helpers shared by the project's shell scripts; source it, then set SCRIPT (the name in
# messages). Processes are started and stopped by their recorded PIDs only.
# shellcheck shell=bash

SCRIPT="${SCRIPT:-$(basename "$0" .sh)}"

# A progress line on stderr, with the time.
log() { echo "+++ [$SCRIPT $(date +%H:%M:%S)] $*" >&2; }
die() { echo "$SCRIPT: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# A TCP port on loopback that nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# Seconds since T0 (set T0=$(date +%s.%N) first).
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# Background components of STATE_DIR: logs/NAME.log and pids/NAME.pid.
running() { local f="$STATE_DIR/pids/$1.pid"; [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; }
start_bg() { # NAME CMD...
  local name=$1; shift
  setsid "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/pids/$name.pid"
  log "started $name (pid $!)"
}

# job_start STATUS_FILE CMD...: CMD in a session of its own (`kill -- -$!` stops all of it),
# its exit status written to STATUS_FILE when it ends. The file, not `wait`, is the record:
# bash forgets a finished job's status once a new child reuses its PID, and PIDs wrap
# within a long run (pid_max is 32768 on small machines).
job_start() {
  local status_file=$1; shift
  rm -f "$status_file"
  # shellcheck disable=SC2016 # expanded by the inner bash
  # Written aside then renamed: a reader never sees the file without its number.
  setsid bash -c '"${@:2}"; echo $? >"$1.partial" && mv "$1.partial" "$1"' job "$status_file" "$@" &
}
# job_running PID STATUS_FILE: the job started with that file has not ended.
job_running() { [[ ! -e "$2" ]] && kill -0 "$1" 2>/dev/null; }
# job_wait PID STATUS_FILE: waits for the job to end and returns its exit status.
job_wait() {
  local pid=$1 status_file=$2
  wait "$pid" 2>/dev/null || true
  while job_running "$pid" "$status_file"; do sleep 1; done
  [[ -s "$status_file" ]] || { echo "$SCRIPT: the background job $pid ended without an exit status (killed?)" >&2; return 1; }
  return "$(cat "$status_file")"
}
# job_stop PID STATUS_FILE: stops the job's whole session if it is still running (the
# process itself if it has not made its session yet).
job_stop() {
  if job_running "$1" "$2"; then kill -- -"$1" 2>/dev/null || kill "$1" 2>/dev/null || true; fi
}

# wait_for DESC CMD...: until CMD succeeds, at most START_TIMEOUT seconds; fails at once,
# with its log, when one of the components named in WATCHED (an array) has exited.
wait_for() {
  local desc=$1 c; shift
  local deadline=$(( $(date +%s) + ${START_TIMEOUT:-120} ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      echo "$SCRIPT: timed out waiting for $desc; last log lines:" >&2
      for c in "${WATCHED[@]}"; do
        [[ -f "$STATE_DIR/logs/$c.log" ]] && { echo "--- $c" >&2; tail -n 20 "$STATE_DIR/logs/$c.log" >&2; }
      done
      exit 1
    fi
    for c in "${WATCHED[@]}"; do
      if [[ -f "$STATE_DIR/pids/$c.pid" ]] && ! running "$c"; then
        echo "$SCRIPT: $c exited; log tail:" >&2; tail -n 40 "$STATE_DIR/logs/$c.log" >&2; exit 1
      fi
    done
    sleep 0.5
  done
  log "$desc ready after $(elapsed)s"
}

# The Kubernetes versions the tiers run on: the newest the module proxy serves that builds
# and runs here, and an older supported one (scripts/kube/build-current.sh, scripts/test.sh).
# shellcheck disable=SC2034
KUBE_VERSIONS_DEFAULT="1.37.2 1.34.4"
