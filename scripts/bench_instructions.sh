#!/usr/bin/env bash
# The cost of limiting per request in instructions, which do not depend on what else the
# machine is doing: tollgate with limits on and with limits off, each run under
# `valgrind --tool=callgrind` in front of the example upstream, once idle and once serving N
# requests on keep-alive connections. Instructions per request = (I(N) - I(idle)) / N, and the
# ratio on/off is the CPU cost of the limiter the way SPEC section 8 means it, without the
# scheduling noise of a 2-core machine that `scripts/bench.sh` is exposed to.
#
# Usage: scripts/bench_instructions.sh [N]     (default 3000 requests)
#   INSTR_KEEP=1   keep the temporary directory (callgrind outputs: callgrind_annotate FILE)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-3000}

. scripts/lib.sh
ensure valgrind:valgrind cmake:cmake cc:build-essential
cargo build --release --bins
DIR=$(mktemp -d /tmp/tollgate-instr.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${INSTR_KEEP:-0}" = 1 ] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT

python3 - "$ROOT" "$DIR" "$N" <<'PY'
import http.client, json, os, re, signal, socket, subprocess, sys, time

root, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tollgate = os.path.join(root, "target/release/tollgate")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, deadline):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")

up = subprocess.Popen([os.path.join(root, "target/release/rating-api"), "--listen", "127.0.0.1:0"],
                      stdout=subprocess.PIPE, text=True)
up_addr = up.stdout.readline().strip().rsplit(" ", 1)[-1]

def run(name, limits, requests):
    port, admin = free_port(), free_port()
    cfg = {
        "node_id": "instr", "access_log": False, "threads": 1, "grace_period_seconds": 1,
        "listeners": [{"address": f"127.0.0.1:{port}"}], "admin": {"address": f"127.0.0.1:{admin}"},
        "upstreams": {"api": {"servers": [up_addr]}},
        "limits": {
            "per-api-key": {"capacity": 1000000000, "refill_per_second": 1e9, "key": ["header:x-api-key"]},
            "per-ip": {"capacity": 1000000000, "refill_per_second": 1e9, "key": ["client_ip"]},
        },
        "routes": [{"name": "rating", "match": {"path_prefix": "/"}, "upstream": "api", "limits": limits}],
    }
    path = os.path.join(work, f"{name}-{requests}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(work, f"callgrind.{name}.{requests}")
    log = open(out + ".log", "w")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          tollgate, "run", "-c", path], stdout=log, stderr=log,
                         env=dict(os.environ, TOLLGATE_LOG="warn"))
    wait_port(port, 120)
    wait_port(admin, 120)
    # Warm-up outside the count is impossible (callgrind counts the whole process), so both
    # configs do the same: connect, then `requests` requests on 10 keep-alive connections.
    cons = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(10)]
    for i in range(requests):
        c = cons[i % 10]
        c.request("GET", "/rating/42", headers={"x-api-key": "bench"})
        r = c.getresponse(); r.read()
        if r.status != 200:
            raise SystemExit(f"{name}: status {r.status}")
    for c in cons:
        c.close()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    return total

results = {}
for name, limits in (("on", ["per-api-key", "per-ip"]), ("off", [])):
    idle = run(name, limits, 0)
    busy = run(name, limits, n)
    results[name] = (busy - idle) / n
    print(f"limits {name:3}: idle {idle:>14,} instr, {n} requests {busy:>14,} instr -> {results[name]:>10,.0f} instr/request")
up.kill()
ratio = results["on"] / results["off"]
print(f"instructions per request, limits on / limits off = {ratio:.3f}  ({(ratio - 1) * 100:+.1f}%; target at most +3%)")
PY
