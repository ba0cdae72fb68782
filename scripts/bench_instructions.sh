#!/usr/bin/env bash
# The cost of limiting per request in instructions, which do not depend on what else the
# machine is doing: tollgate with limits on and with limits off, each run under
# `valgrind --tool=callgrind` in front of the example upstream, once idle and once serving N
# requests on keep-alive connections, each counted from the moment it listens until it is told
# to exit (start-up and shut-down are left out). Instructions per request = (I(N) - I(idle)) / N, and the
# ratio on/off is the user-space CPU cost of the limiter, without the scheduling noise of a
# 2-core machine that `scripts/bench.sh` is exposed to. The same runs under `strace -c` count
# system calls per request: the kernel's share of the CPU (see bench.sh's user/system split)
# is the same for both when these are equal.
#
# The busy runs are repeated in alternating order (INSTR_ROUNDS, default 3) and the medians
# reported: part of pingora's work per request depends on wall-clock time (its timer wheel
# makes a new time slot, a map insert and an allocation, whenever a request crosses one), and a
# program under callgrind runs about 50 times slower, so that part moves by up to 1,000
# instructions per request from one run to the next, for both configurations alike. The
# script prints that part of each run.
#
# Copies and fills of 2 KiB or more are counted as the instructions of glibc's vector loop:
# glibc does them with `rep movsb` / `rep stosb` by default, which callgrind counts once per
# byte (a 13 KiB copy of pingora's boxed request future counted as 13,000 instructions, about
# 20,000 of a request's 85,000 in all), while the processor moves tens of bytes a cycle. The
# measured programs run with `GLIBC_TUNABLES` raising glibc's thresholds for those
# instructions out of reach (INSTR_REP_BYTES=1 counts them as before), so that the ratio is
# one of instructions executed, not of bytes copied. Counts before 2026-11-30 (afternoon)
# included the bytes: the same code measured about 13,000 instructions per request more, and
# its ratios about 0.009 lower.
#
# Usage: scripts/bench_instructions.sh [N]     (default 3000 requests)
#   INSTR_ROUNDS=R busy runs per configuration (default 3)
#   INSTR_KEEP=1   keep the temporary directory (callgrind outputs: callgrind_annotate FILE)
#   INSTR_ONLY=on  measure one configuration only (on or off), for profiling
#   CALLGRIND_ARGS extra callgrind options (e.g. --dump-instr=yes for per-instruction costs)
#   INSTR_PLANS=1  "limits on" with plans configured: the API-key limit with 100,000 overrides
#                  in an overrides file (the benchmark's key among them) and a daily quota
#                  with overrides in place of the per-IP limit; the target is the same
#   INSTR_BARE=1   also measure examples/bare_proxy.rs (pingora with nothing of tollgate, the
#                  floor of scripts/bench.sh) the same way: informational, no target
#   INSTR_REP_BYTES=1  count `rep movsb`/`rep stosb` byte by byte, as callgrind does by default
#   INSTR_FEATURES=1  "limits on" with metering too: a concurrency limit, a limit charged by
#                  the response's x-usage-tokens and refund_statuses on the route (both
#                  configurations request /v1/complete?tokens=3); the target is the same
#   INSTR_PEERS=1  also count what nginx's `limit_req` and HAProxy's stick tables add to their
#                  own proxies, on the same two keys, the same load and upstream (see
#                  `peer_run`): informational, no target. Each peer runs under callgrind
#                  from start to exit, serving N/3 and then N requests, and the difference is
#                  divided by the requests between (its start-up and shut-down cancel out;
#                  `callgrind_control` cannot be used, as an idle nginx never runs the code
#                  that would answer it)
#
# Exit status: 2 when limits on / limits off is over 1.03 (the target), 1 on an error.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-3000}

. scripts/lib.sh
ensure valgrind:valgrind strace:strace cmake:cmake cc:build-essential
if [ "${INSTR_PEERS:-0}" = 1 ]; then ensure nginx:nginx haproxy:haproxy; fi
cargo build --release --bins
if [ "${INSTR_BARE:-0}" = 1 ]; then cargo build --release --example bare_proxy; fi
DIR=$(mktemp -d /tmp/tollgate-instr.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${INSTR_KEEP:-0}" = 1 ] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT

python3 - "$ROOT" "$DIR" "$N" <<'PY'
import http.client, json, os, re, signal, socket, statistics, subprocess, sys, time

root, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
bindir = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target")), "release")
tollgate = os.path.join(bindir, "tollgate")
bare_proxy = os.path.join(bindir, "examples", "bare_proxy")

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

up = subprocess.Popen([os.path.join(bindir, "rating-api"), "--listen", "127.0.0.1:0"],
                      stdout=subprocess.PIPE, text=True)
up_addr = up.stdout.readline().strip().rsplit(" ", 1)[-1]

FEATURES = os.environ.get("INSTR_FEATURES") == "1"
# Both configurations send the same request; with INSTR_FEATURES the upstream reports a usage.
TARGET = "/v1/complete?tokens=3" if FEATURES else "/rating/42"

def plans_file(kind):
    """An overrides file of 100,000 keys, the benchmark's key ("bench") among them, for a
    bucket or a quota limit."""
    path = os.path.join(work, f"plans-{kind}.json")
    if not os.path.exists(path):
        own = ({"capacity": 1000000000, "refill_per_second": 1e9} if kind == "bucket"
               else {"quota": 1000000000000})
        plans = {f"key-{i}": ("unlimited" if i % 10 == 9 else own) for i in range(99999)}
        plans["bench"] = own
        with open(path, "w") as f:
            json.dump(plans, f)
    return path

def measured_env():
    """The environment of a measured program: glibc's `rep movsb`/`rep stosb` out of reach
    (see the header), unless INSTR_REP_BYTES=1."""
    env = dict(os.environ, TOLLGATE_LOG="warn")
    if os.environ.get("INSTR_REP_BYTES") != "1":
        never = 2**32 - 1
        env["GLIBC_TUNABLES"] = (f"glibc.cpu.x86_rep_movsb_threshold={never}:"
                                 f"glibc.cpu.x86_rep_stosb_threshold={never}")
    return env

def run(name, limits, requests, tool):
    """Runs tollgate under `tool` ("callgrind" or "strace"), idle or serving `requests`;
    returns the tool's output file."""
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
    if limits and os.environ.get("INSTR_PLANS") == "1":
        cfg["limits"]["per-api-key"]["overrides_file"] = plans_file("bucket")
        cfg["limits"]["per-ip"] = {"quota": 1000000000000, "window": "day", "key": ["header:x-api-key"],
                                   "overrides_file": plans_file("quota")}
    if limits and FEATURES:
        # Metering: a concurrency limit, a limit charged by the response's usage header, and
        # refunds on the route (the request asks the upstream to report 3 tokens).
        cfg["limits"]["in-flight"] = {"max_in_flight": 1000000, "key": ["header:x-api-key"]}
        cfg["limits"]["llm"] = {"capacity": 1000000000, "refill_per_second": 1e9,
                                "key": ["header:x-api-key"]}
        cfg["routes"][0]["limits"] = limits + ["in-flight", {"limit": "llm", "cost": {
            "response_header": "x-usage-tokens", "reserve": 1, "strip": True}}]
        cfg["routes"][0]["refund_statuses"] = ["5xx"]
    path = os.path.join(work, f"{name}-{requests}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(work, f"{tool}.{name}.{requests}")
    log = open(out + ".log", "w")
    if tool == "callgrind":
        extra = os.environ.get("CALLGRIND_ARGS", "").split()
        # Counting starts once the gateway listens and stops before it is told to exit
        # (`callgrind_control -i on`/`off` below): what starting and stopping cost (100,000
        # overrides put into maps with random hash seeds, and freed, for plans) varies from
        # run to run by more than the difference being measured.
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", *extra]
    else:
        cmd = ["strace", "-f", "-c", "-o", out]
    # The bare proxy: one worker thread, in front of the same upstream.
    program = ([bare_proxy, f"127.0.0.1:{port}", up_addr, "1"] if name == "bare"
               else [tollgate, "run", "-c", path])
    p = subprocess.Popen([*cmd, *program], stdout=log, stderr=log, env=measured_env())
    wait_port(port, 120)
    if name != "bare":
        wait_port(admin, 120)
    cons = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(10)]

    def send(c):
        c.request("GET", TARGET, headers={"x-api-key": "bench"})
        r = c.getresponse(); r.read()
        if r.status != 200:
            raise SystemExit(f"{name}: status {r.status}")

    # Warm-up, not counted: one request on each of the 10 keep-alive connections (accepting
    # them, the upstream's pool, the benchmark key's bucket).
    if requests and tool == "callgrind":
        for c in cons:
            send(c)
    if tool == "callgrind":
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in range(requests):
        send(cons[i % 10])
    for c in cons:
        c.close()
    if tool == "callgrind":
        # Shutting down is left out too (freeing 200,000 overrides costs a varying count).
        subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Under strace the gateway is strace's child: signal it, not strace.
    target = p.pid
    if tool == "strace":
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)
        target = int(children.stdout.split()[0])
    os.kill(target, signal.SIGTERM)
    p.wait(timeout=120)
    return out

def instructions(out):
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    return total

def syscalls(out):
    """Total calls from an `strace -c` summary."""
    with open(out) as f:
        for line in f:
            fields = line.split()
            if fields and fields[-1] == "total":
                return int(fields[3] if len(fields) >= 5 else fields[2])
    raise SystemExit(f"no total in {out}")

def timer_share(out):
    """Instructions in pingora's timer wheel (registering timers, the clock thread)."""
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                         capture_output=True, text=True).stdout
    total = 0
    for line in ann.splitlines():
        if re.search(r"TimerManager::(register_timer(?:_at)?|clock_thread) ", line):
            total += int(line.split()[0].replace(",", ""))
    return total

def peer_conf(kind, port, limits, where):
    """The configuration of scripts/bench.sh's nginx (two `limit_req` zones; its worker run
    alone, without a master process) or HAProxy (two stick tables), one worker, on the
    benchmark's two keys, in front of the example upstream (scripts/lib.sh); without the
    limits when `limits` is false. nginx keeps its files in `where`."""
    if kind == "nginx":
        script = ('. scripts/lib.sh; '
                  'nginx_cfg "$1" 1 off "$(nginx_proxy_http "$2" "$3" "listen 127.0.0.1:$4;")"')
        args = [where, up_addr, "1" if limits else "0", str(port)]
    else:
        script = '. scripts/lib.sh; haproxy_cfg "$@"'
        args = [str(port), "1", up_addr, "1" if limits else "0"]
    return subprocess.run(["bash", "-c", script, "peer_conf", *args],
                          check=True, capture_output=True, text=True).stdout

def peer_run(kind, limits, requests):
    """Instructions of one whole run of peer `kind` ("nginx" or "haproxy") under callgrind,
    serving `requests` (after one warm-up request on each of 10 keep-alive connections)."""
    port = free_port()
    name = f"{kind}-{'on' if limits else 'off'}"
    where = os.path.join(work, name)
    os.makedirs(os.path.join(where, "logs"), exist_ok=True)
    path = os.path.join(where, f"{kind}.conf")
    with open(path, "w") as f:
        f.write(peer_conf(kind, port, limits, where))
    out = os.path.join(work, f"callgrind.{name}.{requests}")
    program = (["nginx", "-c", path, "-p", where, "-e", os.path.join(where, "logs", "error.log")]
               if kind == "nginx"
               else ["haproxy", "-db", "-f", path])
    with open(out + ".log", "w") as log:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              *program], stdout=log, stderr=log, env=measured_env())
    try:
        wait_port(port, 120)
        cons = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(10)]
        for i in range(requests + len(cons)):
            c = cons[i % len(cons)]
            c.request("GET", TARGET, headers={"x-api-key": "bench"})
            r = c.getresponse(); r.read()
            if r.status != 200:
                raise SystemExit(f"{name}: status {r.status} (see {out}.log)")
        for c in cons:
            c.close()
        # Graceful stops: nginx's SIGQUIT, HAProxy's SIGUSR1.
        os.kill(p.pid, signal.SIGQUIT if kind == "nginx" else signal.SIGUSR1)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return instructions(out)

def peers():
    """What nginx's and HAProxy's limiters add to their own proxies, per request, in the same
    count as tollgate's (informational)."""
    low = n // 3
    for kind in ("nginx", "haproxy"):
        per = {}
        for limits in (True, False):
            runs = [(peer_run(kind, limits, n) - peer_run(kind, limits, low)) / (n - low)
                    for _ in range(2)]
            per[limits] = statistics.median(runs)
            print(f"{kind} {'with' if limits else 'without'} its limiter: "
                  f"{per[limits]:,.0f} instr/request (runs {', '.join(f'{r:,.0f}' for r in runs)})")
        print(f"{kind}: limiter on / off = {per[True] / per[False]:.3f}  "
              f"({per[True] - per[False]:,.0f} instructions; informational)")

def label(name):
    return "bare pingora" if name == "bare" else f"limits {name:3}"

only = os.environ.get("INSTR_ONLY")
measured = [("on", ["per-api-key", "per-ip"]), ("off", [])]
if os.environ.get("INSTR_BARE") == "1":
    measured.append(("bare", []))
configs = [(name, limits) for name, limits in measured if not only or name == only]
rounds = max(1, int(os.environ.get("INSTR_ROUNDS", "3")))
idle = {}
per_round = {name: [] for name, _ in configs}
per_round_steady = {name: [] for name, _ in configs}
calls = {}
for name, limits in configs:
    idle_out = run(name, limits, 0, "callgrind")
    idle[name] = (instructions(idle_out), timer_share(idle_out))
    print(f"{label(name)}: idle {idle[name][0]:>14,} instr")
for r in range(rounds):
    # Alternating order, so that neither configuration always runs first.
    for name, limits in (configs if r % 2 == 0 else configs[::-1]):
        out = run(name, limits, n, "callgrind")
        busy = instructions(out)
        per_request = (busy - idle[name][0]) / n
        timers = (timer_share(out) - idle[name][1]) / n
        per_round[name].append(per_request)
        per_round_steady[name].append(per_request - timers)
        print(f"round {r + 1} {label(name)}: {n} requests {busy:>14,} instr -> {per_request:>10,.0f} instr/request"
              f"  (of which pingora's timer wheel {timers:,.0f})")
# strace is installed above, like valgrind.
for name, limits in configs:
    c_idle = syscalls(run(name, limits, 0, "strace"))
    c_busy = syscalls(run(name, limits, n, "strace"))
    calls[name] = (c_busy - c_idle) / n
    print(f"{label(name)}: {calls[name]:.2f} system calls/request (strace -c, {c_busy - c_idle} over {n} requests)")
if os.environ.get("INSTR_PEERS") == "1":
    peers()
up.kill()
results = {name: statistics.median(v) for name, v in per_round.items()}
# The same without pingora's timer wheel, whose share follows the wall-clock time a run takes
# under callgrind rather than the requests: the steadier figure for comparing two changes.
steady = {name: statistics.median(v) for name, v in per_round_steady.items()}
for name, v in results.items():
    print(f"{label(name)}: median {v:,.0f} instr/request over {len(per_round[name])} runs")
if "bare" in results and "off" in results:
    print(f"bare pingora: {results['bare']:,.0f} instr/request; tollgate with limits off adds "
          f"{results['off'] - results['bare']:,.0f} ({results['off'] / results['bare']:.3f} x)")
if only:
    raise SystemExit(0)
ratio = results["on"] / results["off"]
rounds_ratio = " ".join(f"{a / b:.3f}" for a, b in zip(per_round["on"], per_round["off"]))
print(f"per round, limits on / limits off: {rounds_ratio}")
print(f"instructions per request, limits on / limits off = {ratio:.3f}  ({(ratio - 1) * 100:+.1f}%; "
      f"{results['on'] - results['off']:,.0f} instructions; target at most +3%)")
print(f"without pingora's timer wheel: limits on / limits off = {steady['on'] / steady['off']:.3f}  "
      f"({steady['on'] - steady['off']:,.0f} instructions)")
print(f"system calls per request, limits on / limits off = {calls['on'] / calls['off']:.3f}")
if ratio > 1.03:
    print(f"FAIL: limits on / off = {ratio:.3f}, over the 1.03 target")
    raise SystemExit(2)
print(f"PASS: limits on / off = {ratio:.3f} (target at most 1.03)")
PY
