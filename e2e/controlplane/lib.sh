# Shared by start.sh, stop.sh and node.sh: components are started in the background with their
# output in $RUN/logs/NAME.log and their process id in $RUN/pids/NAME, and stopped by that id.
# The sourcing script sets RUN and COMPONENT (the name its log lines carry).

log() { printf '[controlplane/%s %(%H:%M:%S)T] %s\n' "$COMPONENT" -1 "$*" >&2; }
# running PID: the process exists and is not a zombie (a killed component whose parent is gone may
# linger as one where nothing reaps it, and kill -0 succeeds on it).
running() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }
alive() { [ -f "$RUN/pids/$1" ] && running "$(cat "$RUN/pids/$1")"; }

# launch NAME CMD...: starts CMD in the background.
launch() {
  local name=$1; shift
  "$@" >"$RUN/logs/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name"
}

# wait_for NAME SECONDS CMD...: polls CMD every 0.2 s; if NAME exits or time runs out, prints its
# log's tail and fails.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then log "$name exited; last log lines:"; tail -n 30 "$RUN/logs/$name.log" >&2; return 1; fi
    if [ $SECONDS -ge $deadline ]; then log "$name not ready after ${secs}s; last log lines:"; tail -n 30 "$RUN/logs/$name.log" >&2; return 1; fi
    sleep 0.2
  done
}

# stop_pid NAME: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
  local f=$RUN/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid"; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

# kubeconfig FILE USER CREDENTIAL-FLAGS...: a kubeconfig for the API server at $APISERVER_URL,
# trusting the cluster CA $RUN/pki/ca.crt.
kubeconfig() {
  local f=$1 user=$2; shift 2
  kubectl config --kubeconfig="$f" set-cluster e2e --server="$APISERVER_URL" \
    --certificate-authority="$RUN/pki/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$f" set-credentials "$user" "$@" >/dev/null
  kubectl config --kubeconfig="$f" set-context e2e --cluster=e2e --user="$user" >/dev/null
  kubectl config --kubeconfig="$f" use-context e2e >/dev/null
}
