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
