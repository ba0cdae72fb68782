# Sourced by the scripts: installs what a fresh Debian machine lacks.
# ensure COMMAND:PACKAGE ...   installs each PACKAGE whose COMMAND is not on the PATH
# (apt-get update first, sudo when not root).
ensure() {
  local need=() pair sudo=""
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "== installing: ${need[*]}"
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

# stop_all PID ...   SIGTERM to each process (and, at the end, SIGKILL to it and to the
# children it had, such as nginx workers), waiting up to 5 s for them to exit.
stop_all() {
  local p kids=()
  for p in "$@"; do mapfile -t -O "${#kids[@]}" kids < <(pgrep -P "$p" || true); done
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "$@" "${kids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
