#!/usr/bin/env bash
# Soak: mixed load through 2 tollgate nodes sharing buckets through one real Redis, with a Redis
# kill/restart (empty) at ~1/3 and config reloads (SIGHUP, POST /reload) at ~1/2. Checks that
# fds, threads and RSS stay flat, that Redis accounts for every token the nodes consumed, that
# no 5xx was seen, and that both nodes exit 0 on SIGTERM. Prints `soak: PASS` or `soak: FAIL (...)`.
# Usage: scripts/soak.sh [SECONDS]   (default 180, 30..3600; runs in under SECONDS + 60 once built)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-180}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || (( secs < 30 || secs > 3600 )); then
    echo "usage: scripts/soak.sh [SECONDS]   (an integer from 30 to 3600, default 180)" >&2
    exit 2
fi
for tool in redis-server python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool missing (scripts/test.sh installs redis-server)"; exit 1; }
done
cargo build --release --bins

work="$(mktemp -d /tmp/tollgate-soak.XXXXXX)"
pid=""
cleanup() {
    # Safety net: soak.py kills its children itself; this catches an abrupt end of soak.py.
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [[ -f "$work/pids" ]]; then
        # soak.py removes this file once it has reaped every child; only the ones still named
        # as ours are killed (a pid may have been reused).
        while read -r child; do
            [[ "$child" =~ ^[0-9]+$ ]] || continue
            if tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null | grep -Eq 'tollgate|redis-server|rating-api'; then
                kill -KILL "$child" 2>/dev/null || true
            fi
        done <"$work/pids"
    fi
    if [[ -f "$work/PASS" ]]; then
        rm -rf "$work"
    elif [[ -d "$work" && ! -f "$work/FAIL" ]]; then   # soak.py names the directory on FAIL
        echo "soak: configs and node logs kept in $work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 scripts/soak.py target/release/tollgate target/release/rating-api "$secs" "$work" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
exit "$rc"
