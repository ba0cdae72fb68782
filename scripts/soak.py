#!/usr/bin/env python3
"""Soak: 2 tollgate nodes sharing buckets through one real redis-server, in front of rating-api.

Mixed load for DURATION s (python threads, keep-alive connections, 8 per node): GET and POST
/rating/ITEM with one of 200 API keys (4 hot keys hammered past their limit, 196 light ones
visited in rotation so that every bucket stays live), and other paths through the default route.
Events: at ~1/3 Redis is SIGKILLed and started again, empty, on the same port 5 s later; at ~1/2
both configs are rewritten (per-api-key capacity 100 -> 120) and reloaded, node 1 by SIGHUP,
node 2 by POST /reload on its admin API.

Fails (exit 1) when:
  - fds of a node grew by more than 20, its threads changed by more than 2, or its RSS grew by
    more than 50% between the end of a 10 s warm-up and the end of the run;
  - the sum of `soak-N:consumed` over every `soak:per-api-key:*` hash in Redis does not reach the
    sum of `tokens_consumed_total{limit="per-api-key"}` of both nodes within 15 s of the load's end;
  - more than 1% of the light keys' requests (within their limit) were refused;
  - a node's /health did not say `degraded` within half the outage;
  - any 5xx was seen (client side, or `requests_total{outcome="upstream_error"}`), or a client
    request failed at the transport level, or got a status other than 200/429;
  - a reload did not succeed, Redis was not reconnected, or a node did not exit 0 within 10 s
    of SIGTERM;
  - a slot of the concurrency limit on the rating route (`in-flight`) was not given back: once
    the load ends, every node sees all of them free and its Redis fields give back what they took.

Usage: scripts/soak.py TOLLGATE_BIN RATING_API_BIN DURATION WORKDIR
(scripts/soak.sh builds the binaries, makes WORKDIR and removes it after a PASS.)
"""
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

PREFIX = "soak"
NODE_IDS = ["soak-1", "soak-2"]
SYNC_MS = 100
CAPACITY = 100
CAPACITY_RELOADED = 120
RATE = 50
THREADS_PER_NODE = 8
HOT_KEYS = [f"hot-{i}" for i in range(4)]
# The concurrency limit on the rating route: never reached by the load (8 connections a node),
# there to check that every slot taken is given back.
IN_FLIGHT = 1000
LIGHT_KEYS = [f"key-{i:03d}" for i in range(len(HOT_KEYS), 200)]
LIGHT_SET = frozenset(LIGHT_KEYS)
WARMUP_S = 10.0
OUTAGE_S = 5.0
ACCOUNTING_DEADLINE_S = 15.0
TERM_DEADLINE_S = 10.0
FD_GROWTH_MAX = 20
THREADS_CHANGE_MAX = 2
RSS_GROWTH_MAX = 0.50


class Failed(Exception):
    pass


# ---------------------------------------------------------------- processes and ports

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc=None, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise Failed(f"process {proc.args[0]} exited with {proc.returncode} before opening port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failed(f"port {port} never opened")


class Procs:
    """Every child process, with its pid recorded in WORKDIR/pids for soak.sh's safety net."""

    def __init__(self, work):
        self.work = work
        self.all = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.all.append(p)
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def kill_all(self):
        for p in self.all:
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        for p in self.all:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if all(p.poll() is not None for p in self.all):
            try:
                os.remove(os.path.join(self.work, "pids"))
            except OSError:
                pass


def start_redis(procs, port):
    p = procs.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p


# ---------------------------------------------------------------- a minimal Redis client (RESP)

class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        self.f = self.sock.makefile("rb")

    def close(self):
        self.f.close()
        self.sock.close()

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(self.encode(c) for c in cmds))
        return [self.read() for _ in cmds]

    def cmd(self, *args):
        return self.pipeline([args])[0]


def redis_consumed(port):
    """SCAN every per-api-key hash, then HMGET each node's consumed field: ({node: sum}, hashes)."""
    r = Redis(port)
    try:
        keys, cursor = [], b"0"
        while True:
            cursor, batch = r.cmd("SCAN", cursor, "MATCH", f"{PREFIX}:per-api-key:*", "COUNT", 1000)
            keys.extend(batch)
            if cursor == b"0":
                break
        sums = {n: 0 for n in NODE_IDS}
        per_key = {}
        fields = [f"{n}:consumed" for n in NODE_IDS]
        for k, vals in zip(keys, r.pipeline([["HMGET", k, *fields] for k in keys])):
            per_key[k.decode(errors="replace")] = [int(v) if v is not None else 0 for v in vals]
            for n, v in zip(NODE_IDS, vals):
                sums[n] += int(v) if v is not None else 0
        return sums, len(keys), per_key
    finally:
        r.close()


# ---------------------------------------------------------------- the nodes

def http_call(port, method, path, body=None, timeout=5):
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        con.request(method, path, body=body)
        r = con.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        con.close()


METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m:
            value = float(m.group(3))
            if value.is_integer():
                value = int(m.group(3)) if re.fullmatch(r"-?\d+", m.group(3)) else int(value)
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), value))
    return out


def metric(samples, name, **labels):
    """Sum of NAME's samples whose labels include LABELS (0 when there is none)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


class Node:
    def __init__(self, procs, bin_, work, node_id, redis_port, up_port):
        self.id = node_id
        self.port, self.admin = free_port(), free_port()
        self.cfg_path = os.path.join(work, f"{node_id}.json")
        self.log_path = os.path.join(work, f"{node_id}.log")
        self.redis_port, self.up_port = redis_port, up_port
        self.write_config(CAPACITY)
        self.log = open(self.log_path, "w")
        env = dict(os.environ, TOLLGATE_LOG=os.environ.get("TOLLGATE_LOG", "info"))
        self.proc = procs.start([bin_, "run", "-c", self.cfg_path], stdout=self.log, stderr=self.log, env=env)
        wait_port(self.port, self.proc)
        wait_port(self.admin, self.proc)

    def write_config(self, capacity):
        cfg = {
            "node_id": self.id,
            "listeners": [{"address": f"127.0.0.1:{self.port}"}],
            "admin": {"address": f"127.0.0.1:{self.admin}"},
            # Every change written: the accounting below compares Redis with every token the
            # nodes took, which quiet buckets (light keys kept out of Redis) would not allow.
            "redis": {"url": f"redis://127.0.0.1:{self.redis_port}/0", "sync_interval_ms": SYNC_MS,
                      "key_prefix": PREFIX, "quiet_buckets": False},
            "upstreams": {"rating-api": {"servers": [f"127.0.0.1:{self.up_port}"]}},
            "limits": {
                "per-api-key": {"capacity": capacity, "refill_per_second": RATE, "key": ["header:x-api-key"]},
                "per-ip": {"capacity": 100000, "refill_per_second": 100000, "key": ["client_ip"]},
                "in-flight": {"max_in_flight": IN_FLIGHT, "key": ["header:x-api-key"]},
            },
            "routes": [
                {"name": "rating", "match": {"path_prefix": "/rating", "methods": ["GET", "POST"]},
                 "upstream": "rating-api", "limits": ["per-api-key", "per-ip", "in-flight"]},
                {"name": "default", "match": {"path_prefix": "/"}, "upstream": "rating-api", "limits": ["per-ip"]},
            ],
            "access_log": False,
        }
        tmp = self.cfg_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(tmp, self.cfg_path)

    def metrics(self):
        status, text = http_call(self.admin, "GET", "/metrics")
        if status != 200:
            raise Failed(f"{self.id}: GET /metrics answered {status}")
        return parse_metrics(text)

    def resources(self):
        pid = self.proc.pid
        st = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                st[k] = v.strip()
        return {
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(st["Threads"]),
            "rss_kib": int(st["VmRSS"].split()[0]),
        }

    def log_problems(self, limit=15):
        """WARN and ERROR lines of the node's log (ANSI colours stripped): (first LIMIT lines,
        {message without its timestamp: (count, first timestamp)})."""
        self.log.flush()
        lines, kinds = [], {}
        with open(self.log_path, errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip("\n"))
                m = re.match(r"(\S+)\s+(WARN|ERROR)\s+(.*)", line)
                if m:
                    lines.append(line)
                    n, first = kinds.get(m.group(2) + " " + m.group(3), (0, m.group(1)))
                    kinds[m.group(2) + " " + m.group(3)] = (n + 1, first)
        return lines[:limit], kinds


# ---------------------------------------------------------------- load

# The run's phase, for the per-key admissions: 0 before the Redis kill, 1 while Redis is down,
# 2 after it is back (set by the main thread, read by the load threads).
PHASE = [0]
PHASES = ["before the redis kill", "redis down", "after redis is back"]


class Stats:
    FIELDS = ["requests", "200", "429", "other", "5xx", "errors", "rating_200", "unexpected_429",
              "light_requests", "light_429"]

    def __init__(self):
        self.c = {f: 0 for f in self.FIELDS}
        self.samples = []  # (t, what, request) for 5xx, other statuses, errors, unexpected 429s
        # (API key, phase) -> 200s on the rating route (each took one per-api-key token)
        self.admitted = {}
        self.limited_by = {}  # (route, limit named in the 429 body) -> count
        self.unexpected_window = None  # (first, last) time of a 429 not from per-api-key

    def add(self, other):
        for f in self.FIELDS:
            self.c[f] += other.c[f]
        self.samples.extend(other.samples)
        if other.unexpected_window:
            a, b = other.unexpected_window
            w = self.unexpected_window or (a, b)
            self.unexpected_window = (min(a, w[0]), max(b, w[1]))
        for k, v in other.admitted.items():
            self.admitted[k] = self.admitted.get(k, 0) + v
        for k, v in other.limited_by.items():
            self.limited_by[k] = self.limited_by.get(k, 0) + v


def pick_request(rnd, state):
    """One request of the mix: (method, path, body, headers, route)."""
    item = rnd.randrange(1, 10000)
    if rnd.random() < 0.4:
        key = rnd.choice(HOT_KEYS)
    else:
        key = LIGHT_KEYS[state["light"] % len(LIGHT_KEYS)]
        state["light"] += 1
    x = rnd.random()
    if x < 0.55:
        return "GET", f"/rating/{item}", None, {"x-api-key": key}, "rating"
    if x < 0.70:
        body = json.dumps({"stars": rnd.randint(1, 5), "comment": "soak"}).encode()
        return "POST", f"/rating/{item}", body, {"x-api-key": key, "content-type": "application/json"}, "rating"
    path = rnd.choice(["/health", "/status/200", f"/big?bytes={rnd.choice([512, 4096, 32768])}",
                       f"/items/{item}?q=soak", "/slow?ms=2", "/", f"/rating/{item}"])
    method = "PUT" if path.startswith("/rating/") else "GET"  # PUT is not in the rating route
    body = b'{"x":1}' if method == "PUT" else None
    return method, path, body, {"x-api-key": key}, "default"


def load_worker(port, seed, stop, t0, out):
    rnd = random.Random(seed)
    state = {"light": seed * 31}
    st = Stats()
    con = None
    while not stop.is_set():
        method, path, body, headers, route = pick_request(rnd, state)
        st.c["requests"] += 1
        light = route == "rating" and headers["x-api-key"] in LIGHT_SET
        st.c["light_requests"] += light
        try:
            if con is None:
                con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            con.request(method, path, body=body, headers=headers)
            r = con.getresponse()
            data = r.read()
            s = r.status
            if s == 200:
                st.c["200"] += 1
                if route == "rating":
                    st.c["rating_200"] += 1
                    k = (headers["x-api-key"], PHASE[0])
                    st.admitted[k] = st.admitted.get(k, 0) + 1
            elif s == 429:
                st.c["429"] += 1
                st.c["light_429"] += light
                try:
                    limit = json.loads(data).get("limit", "?")
                except ValueError:
                    limit = "?"
                st.limited_by[(route, limit)] = st.limited_by.get((route, limit), 0) + 1
                if limit != "per-api-key" or route != "rating":
                    st.c["unexpected_429"] += 1
                    now = time.time() - t0
                    st.unexpected_window = (st.unexpected_window or (now, now))[0], now
                    if len(st.samples) < 5:
                        st.samples.append((time.time() - t0, f"429 {data[:200]!r}", f"{method} {path}"))
            else:
                st.c["other"] += 1
                st.c["5xx"] += s >= 500
                if len(st.samples) < 5:
                    st.samples.append((time.time() - t0, f"status {s}", f"{method} {path}"))
            if r.will_close:
                con.close()
                con = None
        except (OSError, http.client.HTTPException) as e:
            st.c["errors"] += 1
            if len(st.samples) < 5:
                st.samples.append((time.time() - t0, f"{type(e).__name__}: {e}", f"{method} {path}"))
            if con is not None:
                con.close()
            con = None
    if con is not None:
        con.close()
    out.append(st)


# ---------------------------------------------------------------- the run

def monitor(nodes, redis_port, state, stop, t0):
    """Every 2 s while Redis is meant to be up: logs when the per-api-key hashes in Redis are
    fewer than the keys in use (info for diagnosing an accounting mismatch)."""
    last_missing = None
    all_keys = [f"{PREFIX}:per-api-key:{k}" for k in HOT_KEYS + LIGHT_KEYS]
    while not stop.wait(2.0):
        if not state["redis_steady"]:
            continue
        got = safe(lambda: redis_consumed(redis_port))
        if got is None:
            continue
        missing = sorted(k.split(":")[-1] for k in set(all_keys) - set(got[2]))
        if missing != last_missing and (missing or last_missing):
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            log(t0, f"  (monitor) redis holds {len(all_keys) - len(missing)}/{len(all_keys)} per-api-key hashes"
                    + (f"; missing: {shown}" if missing else ""))
        last_missing = missing


def log(t0, msg):
    print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)


def wait_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def poll(deadline_s, fn, step=0.1):
    """Calls FN until it returns a true value or DEADLINE_S pass; returns its last value."""
    end = time.time() + deadline_s
    while True:
        v = fn()
        if v or time.time() >= end:
            return v
        time.sleep(step)


def safe(fn, default=None):
    try:
        return fn()
    except (OSError, http.client.HTTPException, RuntimeError, Failed):
        return default


def run(bin_, api, duration, work, procs, fails):
    redis_port = free_port()
    redis = start_redis(procs, redis_port)
    up_port = free_port()
    up_log = os.path.join(work, "rating-api.log")
    with open(up_log, "w") as f:
        up = procs.start([api, "--listen", f"127.0.0.1:{up_port}"], stdout=f, stderr=f)
    wait_port(up_port, up)
    with open(up_log) as f:
        if "rating-api listening on" not in f.read():
            raise Failed("rating-api did not print its listening line")
    nodes = [Node(procs, bin_, work, n, redis_port, up_port) for n in NODE_IDS]
    print(f"soak: {duration:.0f} s, 2 nodes ({', '.join(f'{n.id} :{n.port} admin :{n.admin}' for n in nodes)}), "
          f"redis :{redis_port}, rating-api :{up_port}, {THREADS_PER_NODE} client threads per node, "
          f"{len(HOT_KEYS)} hot + {len(LIGHT_KEYS)} light API keys", flush=True)

    stop = threading.Event()
    results = [[] for _ in nodes]
    t0 = time.time()
    threads = []
    for i, n in enumerate(nodes):
        for j in range(THREADS_PER_NODE):
            t = threading.Thread(target=load_worker, args=(n.port, i * THREADS_PER_NODE + j, stop, t0, results[i]),
                                 daemon=True)
            t.start()
            threads.append(t)
    log(t0, "load started")
    state = {"redis_steady": False}
    mon = threading.Thread(target=monitor, args=(nodes, redis_port, state, stop, t0), daemon=True)
    mon.start()

    # Warm-up, then the baseline for the resource check.
    wait_until(t0 + WARMUP_S)
    res_start = [n.resources() for n in nodes]
    log(t0, "warm-up done, resources sampled")
    state["redis_steady"] = True

    # Redis: SIGKILL, load on for OUTAGE_S, then a new empty redis-server on the same port.
    wait_until(t0 + max(duration / 3.0, WARMUP_S))
    state["redis_steady"] = False
    redis.send_signal(signal.SIGKILL)
    redis.wait()
    PHASE[0] = 1
    t_kill = time.time()
    log(t0, f"redis SIGKILLed (pid {redis.pid})")
    for n in nodes:
        # Polled until it says so (a node notices at its next sync), within half the outage.
        health = lambda: safe(lambda: http_call(n.admin, "GET", "/health"), (None, "unreachable"))[1]
        body = poll(OUTAGE_S / 2, lambda: (lambda b: b if '"degraded"' in b else None)(health())) or health()
        up_ = safe(lambda: metric(n.metrics(), "tollgate_redis_up"), "?")
        log(t0, f"  {n.id} during the outage: /health {body.strip()}  redis_up {up_}")
        if '"degraded"' not in body:
            fails.append(f"{n.id} /health not degraded within {OUTAGE_S / 2:.1f} s of redis going down")
    wait_until(t_kill + OUTAGE_S)
    redis = start_redis(procs, redis_port)
    PHASE[0] = 2
    t_back = time.time()
    log(t0, f"redis started again, empty, on :{redis_port} (pid {redis.pid})")
    for n in nodes:
        ok = poll(10.0, lambda: safe(lambda: metric(n.metrics(), "tollgate_redis_up") == 1, False))
        if ok:
            log(t0, f"  {n.id}: redis_up 1 again after {time.time() - t_back:.1f} s")
        else:
            fails.append(f"{n.id} did not reconnect to redis within 10 s")
            log(t0, f"  {n.id}: redis_up still not 1 after 10 s")

    state["redis_steady"] = True

    # Reload: capacity 100 -> 120 (the rate of a shared limit cannot change on reload).
    wait_until(max(t0 + duration / 2.0, time.time() + 1.0))
    for n in nodes:
        n.write_config(CAPACITY_RELOADED)
    nodes[0].proc.send_signal(signal.SIGHUP)
    log(t0, f"{nodes[0].id}: config rewritten (per-api-key capacity {CAPACITY_RELOADED}), SIGHUP sent")
    status, body = http_call(nodes[1].admin, "POST", "/reload")
    log(t0, f"{nodes[1].id}: config rewritten, POST /reload -> {status} {body.strip()[:200]}")
    if status != 200:
        fails.append(f"{nodes[1].id} POST /reload answered {status}")
    for n in nodes:
        def reloaded():
            m = n.metrics()
            return (metric(m, "tollgate_config_reloads_total", result="success") == 1
                    and metric(m, "tollgate_limit_capacity", limit="per-api-key") == CAPACITY_RELOADED)
        if poll(10.0, lambda: safe(reloaded, False)):
            log(t0, f"  {n.id}: config_reloads_total{{result=\"success\"}} 1, "
                    f"limit_capacity{{limit=\"per-api-key\"}} {CAPACITY_RELOADED}")
        else:
            m = safe(n.metrics, [])
            got = (metric(m, "tollgate_config_reloads_total", result="success"),
                   metric(m, "tollgate_config_reloads_total", result="failure"),
                   metric(m, "tollgate_limit_capacity", limit="per-api-key"))
            fails.append(f"{n.id} reload not seen (success {got[0]}, failure {got[1]}, capacity {got[2]})")
            log(t0, f"  {n.id}: reload NOT seen: success {got[0]}, failure {got[1]}, capacity {got[2]}")

    # End of the load.
    wait_until(t0 + duration)
    stop.set()
    for t in threads + [mon]:
        t.join(timeout=10)
    t_stop = time.time()
    if any(t.is_alive() for t in threads):
        fails.append("client threads did not stop within 10 s")
    log(t0, "load stopped")
    stats = []
    for rs in results:
        s = Stats()
        for r in rs:
            s.add(r)
        stats.append(s)

    # Accounting: Redis must account for every token the nodes say they consumed.
    last = {}

    def accounted():
        ms = [n.metrics() for n in nodes]
        per_node = [metric(m, "tollgate_tokens_consumed_total", limit="per-api-key") for m in ms]
        in_redis, hashes, per_key = redis_consumed(redis_port)
        last.update(metrics=per_node, redis=in_redis, hashes=hashes, per_key=per_key)
        if "diag" not in last and time.time() >= t_stop + 1.0:
            # Hashes expire ~12 s after their last write: diagnose from an early sample.
            last["diag"] = (time.time() - t_stop, per_key, sum(in_redis.values()), dict(in_redis))
        return sum(per_node) == sum(in_redis.values())

    matched = poll(ACCOUNTING_DEADLINE_S, lambda: safe(accounted, False))
    took = time.time() - t_stop
    if not last:
        fails.append("accounting: neither redis nor metrics could be read")
    else:
        verdict = f"matched after {took:.2f} s" if matched else f"NO MATCH within {ACCOUNTING_DEADLINE_S:.0f} s"
        print(f"accounting (per-api-key): redis sum of consumed {sum(last['redis'].values())} over "
              f"{last['hashes']} hashes, metrics sum of tokens_consumed_total {sum(last['metrics'])}: {verdict}")
        for n, m in zip(nodes, last["metrics"]):
            print(f"  {n.id}: redis {n.id}:consumed {last['redis'][n.id]}, metric {m}")
        if not matched:
            # Which buckets differ from what the clients saw admitted (one token per rating 200).
            when, sample, total_then, per_node_then = last.get(
                "diag", (took, last["per_key"], sum(last["redis"].values()), last["redis"]))
            print(f"  {when:.1f} s after the load stopped: redis {total_then} "
                  f"({', '.join(f'{n}:consumed {v}' for n, v in per_node_then.items())}), "
                  f"metrics {sum(last['metrics'])}, short by {sum(last['metrics']) - total_then} "
                  f"(the numbers above are from the deadline, when idle hashes may have expired: "
                  f"their TTL is ~12 s after the last write)")
            diffs = []
            for key in HOT_KEYS + LIGHT_KEYS:
                by_phase = [[s.admitted.get((key, ph), 0) for ph in range(3)] for s in stats]
                seen = [sum(b) for b in by_phase]
                stored = sample.get(f"{PREFIX}:per-api-key:{key}")
                if stored != seen:
                    diffs.append((key, stored, seen, by_phase))
            print(f"  {len(diffs)} bucket(s) differ from the client-seen admissions, in redis {when:.1f} s after "
                  f"the load stopped (key: redis [soak-1, soak-2] vs client 200s [soak-1, soak-2], "
                  f"each split as {' / '.join(PHASES)}):")
            for key, stored, seen, by_phase in diffs[:20]:
                split = ", ".join("/".join(map(str, b)) for b in by_phase)
                print(f"    {key}: redis {stored if stored is not None else 'MISSING'} vs client {seen} ({split})")
            r = safe(lambda: Redis(redis_port))
            for key, *_ in (diffs[:3] if r else []):
                rkey = f"{PREFIX}:per-api-key:{key}"
                h = r.cmd("HGETALL", rkey) or []
                fields = {h[i].decode(): h[i + 1].decode() for i in range(0, len(h), 2)}
                brief = {f: v for f, v in sorted(fields.items()) if not f.endswith((":waste", ":rate"))}
                print(f"    HGETALL {rkey} (waste, rate left out): {brief or 'absent'}; PTTL {r.cmd('PTTL', rkey)}")
            if r:
                r.close()
            fails.append(f"accounting mismatch: redis {sum(last['redis'].values())} != "
                         f"metrics {sum(last['metrics'])}")

    # Slots: every request has ended, so every node sees every slot of the concurrency limit
    # free again, and every node's fields in Redis have given back all the slots they took.
    def slots_free():
        for n in nodes:
            for key in HOT_KEYS + LIGHT_KEYS[:5]:
                _, body = http_call(n.admin, "GET", f"/rating?limit=in-flight&key={key}")
                if json.loads(body)["remaining"] != IN_FLIGHT:
                    return False
        r = Redis(redis_port)
        try:
            for key in HOT_KEYS:
                h = r.cmd("HGETALL", f"{PREFIX}:in-flight:{key}") or []
                f = {h[i].decode(): int(h[i + 1]) for i in range(0, len(h), 2)}
                if any(f.get(f"{n.id}:consumed", 0) != f.get(f"{n.id}:credit", 0) for n in nodes):
                    return False
        finally:
            r.close()
        return True

    if poll(ACCOUNTING_DEADLINE_S, lambda: safe(slots_free, False)):
        print(f"slots (in-flight, max {IN_FLIGHT}): all given back on both nodes and in redis")
    else:
        fails.append("slots: a node still holds slots of in-flight after the load ended")

    # Resources at the end.
    res_end = [n.resources() for n in nodes]
    print(f"resources (start = after the {WARMUP_S:.0f} s warm-up, end = after load and final syncs); "
          f"flat = fds +{FD_GROWTH_MAX} at most, threads +-{THREADS_CHANGE_MAX} at most, "
          f"RSS +{RSS_GROWTH_MAX:.0%} at most")
    print(f"  {'node':<8} {'resource':<9} {'start':>9} {'end':>9} {'change':>9}  verdict")
    for n, a, b in zip(nodes, res_start, res_end):
        for k in ["fds", "threads", "rss_kib"]:
            d = b[k] - a[k]
            if k == "fds":
                bad = d > FD_GROWTH_MAX
            elif k == "threads":
                bad = abs(d) > THREADS_CHANGE_MAX
            else:
                bad = b[k] > a[k] * (1 + RSS_GROWTH_MAX)
            change = f"{d:+d}" if k != "rss_kib" else f"{d / a[k]:+.1%}"
            print(f"  {n.id:<8} {k:<9} {a[k]:>9} {b[k]:>9} {change:>9}  {'NOT FLAT' if bad else 'ok'}")
            if bad:
                fails.append(f"{n.id} {k} {a[k]} -> {b[k]}")

    # Client counters and the nodes' own view.
    print(f"client counters ({duration:.0f} s of load):")
    print(f"  {'node':<8} {'requests':>9} {'200':>9} {'429':>8} {'other':>6} {'5xx':>5} {'errors':>6} "
          f"{'rating 200':>10} {'req/s':>7}")
    total = Stats()
    for n, s in zip(nodes, stats):
        c = s.c
        print(f"  {n.id:<8} {c['requests']:>9} {c['200']:>9} {c['429']:>8} {c['other']:>6} {c['5xx']:>5} "
              f"{c['errors']:>6} {c['rating_200']:>10} {c['requests'] / duration:>7.0f}")
        total.add(s)
    print(f"  429s by (route, limit): {dict(sorted(total.limited_by.items()))}")
    if total.unexpected_window:
        a, b = total.unexpected_window
        print(f"  429s not from per-api-key on the rating route: {total.c['unexpected_429']}, "
              f"from {a:.2f} s to {b:.2f} s")
    for t, what, req in sorted(total.samples)[:10]:
        print(f"  sample at {t:.1f} s: {what} on {req}")
    ms = [n.metrics() for n in nodes]
    upstream_errors = [metric(m, "tollgate_requests_total", outcome="upstream_error") for m in ms]
    print("node metrics:")
    for n, m in zip(nodes, ms):
        outcomes = {}
        for name, labels, v in m:
            if name == "tollgate_requests_total":
                outcomes[labels.get("outcome")] = outcomes.get(labels.get("outcome"), 0) + v
        print(f"  {n.id}: requests_total by outcome {dict(sorted(outcomes.items()))}, "
              f"sync_errors_total {metric(m, 'tollgate_sync_errors_total')}, "
              f"config_drift{{per-api-key}} {metric(m, 'tollgate_config_drift', limit='per-api-key')}, "
              f"duplicate_node_id {metric(m, 'tollgate_duplicate_node_id')}, "
              f"nodes_live {metric(m, 'tollgate_nodes_live')}")
    rating_tokens = sum(last.get("metrics", [0]))
    print(f"  client-seen /rating 200s {total.c['rating_200']}, tokens_consumed_total{{per-api-key}} "
          f"{rating_tokens} (info: equal unless a request failed in flight)")
    print(f"5xx: client {total.c['5xx']}, metric requests_total{{outcome=\"upstream_error\"}} "
          f"{sum(upstream_errors)} ({', '.join(f'{n.id} {u}' for n, u in zip(nodes, upstream_errors))})")
    if total.c["5xx"] or sum(upstream_errors):
        fails.append(f"5xx seen (client {total.c['5xx']}, upstream_error metric {sum(upstream_errors)})")
    if total.c["errors"]:
        fails.append(f"{total.c['errors']} client transport errors")
    if total.c["other"] - total.c["5xx"]:
        fails.append(f"{total.c['other'] - total.c['5xx']} responses neither 200, 429 nor 5xx")
    if total.c["unexpected_429"]:
        fails.append(f"{total.c['unexpected_429']} 429s not from per-api-key on the rating route "
                     f"(per-ip, 100000/s, should never limit)")
    if not total.c["429"]:
        fails.append("no 429 at all: the hot keys were never limited")
    # The light keys stay within their limit: at most 1% of their requests may be refused.
    light_share = total.c["light_429"] / max(1, total.c["light_requests"])
    print(f"light keys (within their limit): {total.c['light_429']} of "
          f"{total.c['light_requests']} rating requests refused ({100 * light_share:.2f}%, bound 1%)")
    if light_share > 0.01:
        fails.append(f"{100 * light_share:.2f}% of the light keys' requests refused (bound 1%): "
                     f"clients within their limit were turned away")

    # SIGTERM: both nodes must exit 0 within TERM_DEADLINE_S.
    for n in nodes:
        n.proc.send_signal(signal.SIGTERM)
    t_term = time.time()
    for n in nodes:
        try:
            rc = n.proc.wait(timeout=max(0.1, t_term + TERM_DEADLINE_S - time.time()))
            print(f"SIGTERM: {n.id} exited {rc} after {time.time() - t_term:.1f} s")
            if rc != 0:
                fails.append(f"{n.id} exited {rc} on SIGTERM")
        except subprocess.TimeoutExpired:
            print(f"SIGTERM: {n.id} still running after {TERM_DEADLINE_S:.0f} s")
            fails.append(f"{n.id} did not exit within {TERM_DEADLINE_S:.0f} s of SIGTERM")
    for n in nodes:
        lines, kinds = n.log_problems()
        print(f"log {n.id}: {sum(c for c, _ in kinds.values())} WARN/ERROR line(s)"
              + (", by message:" if kinds else ""))
        for msg, (c, first) in sorted(kinds.items(), key=lambda kv: kv[1][1]):
            print(f"  {c:>4} x {msg[:220]}  (first {first})")
        if fails:
            print(f"  first lines of {n.log_path}:")
            for line in lines:
                print(f"    {line[:300]}")
    return nodes


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    bin_, api, duration, work = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    procs = Procs(work)
    fails = []
    started = time.time()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    def on_alarm(_signum, _frame):
        raise Failed(f"watchdog: the run took more than {duration + 50:.0f} s")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(duration) + 50)
    try:
        run(bin_, api, duration, work, procs, fails)
    except Failed as e:
        fails.append(str(e))
    except Exception as e:  # a broken run is a failure too, with its reason on the verdict line
        import traceback
        traceback.print_exc()
        fails.append(f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        procs.kill_all()
    print(f"soak: ran {time.time() - started:.0f} s (bound: SECONDS + 60 = {duration + 60:.0f} s)")
    if fails:
        print(f"soak: node logs and configs kept in {work}")
        with open(os.path.join(work, "FAIL"), "w") as f:
            f.write("\n".join(fails) + "\n")
        print(f"soak: FAIL ({'; '.join(fails)})", flush=True)
        sys.exit(1)
    with open(os.path.join(work, "PASS"), "w") as f:
        f.write("pass\n")
    print("soak: PASS", flush=True)


if __name__ == "__main__":
    main()
