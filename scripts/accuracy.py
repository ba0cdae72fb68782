#!/usr/bin/env python3
"""Multi-node accuracy of shared buckets, as a check that can fail.

Real tollgate nodes (3 unless a row says otherwise) share one real redis-server; real HTTP
clients (http.client on threads, one keep-alive connection each) send GET /x with an
`x-api-key` header through them to the example upstream. A request is admitted when it gets a
200. Each row compares one measured figure with its bound; the Markdown table at the end says
PASS or FAIL per row, and the exit status is 1 when any row misses (2 for a usage error).

Rows (scenario names, for --only; shell patterns such as 'rtt80-*' work too):
  balanced          every node overloaded equally (2 clients each) for DURATION s, capacity 100,
                    50/s: admitted / (capacity + rate x t) in 0.95..1.05
  skewed            the same with clients 8:1:1: 0.90..1.05
  one-busy          4 clients on one node, the others idle: 0.90..1.05
  burst             a full bucket (capacity 100), 100 requests per node at once; rows burst
                    (admitted / capacity) and burst+refill (admitted / (capacity + refill during
                    the burst)), default mode: 0.90..3 (at least about the capacity, at
                    most N x capacity)
  within-sticky     clients within their limits: capacity 5, 1/s, KEYS keys each sending 5
                    requests back to back, a key's requests on one keep-alive connection to one
                    node: at most 1% not admitted
  within-spread     the same, a key's requests round robin over the nodes
  burst-300         a full bucket (capacity 300, 1/s), 600 requests per node at once, default
                    mode: admitted / capacity at most 3
  guard-together, guard-50ms, guard-150ms
                    the same with "burst_guard": true on the limit, the nodes' loads starting
                    together, 50 ms or 150 ms apart: admitted / capacity at most 1.25
  rtt80-balanced, rtt80-one-busy, rtt80-within-sticky, rtt80-within-spread, and the same with
  rtt150-           Redis 80 or 150 ms round trip away (examples/tcp_delay): bounds as above
  outage            Redis stalled 5 s (tcp_delay hold) under steady overload (capacity 50, 20/s,
                    30 requests/s per node): rows outage (admitted during the stall / refill
                    during it, 0.85..1.10) and outage-redis (after the release, the sum of every
                    node's NODE:consumed minus the admitted count, polled up to 10 s: 0)
  join-leave        balanced overload; a 4th node joins after a third of the run, one node
                    leaves after two thirds: rows join and leave, admitted / refill over the
                    window from 1 s after the change to the next change (or the end): 0.95..1.05
  5n-balanced, 5n-within-sticky, 5n-within-spread
                    5 nodes: 0.95..1.05 and at most 1%
  many-keys         MANY_KEYS keys (default 80,000) on 3 nodes at the full request rate the
                    machine drives: one wrk per node (-t1 -c16, scripts/bench/many_keys.lua, a
                    key picked at random per request) for DURATION s, capacity 5, 1/s. Rows
                    many-keys (not 2xx / requests: at most 1%; meaningful while a key's requests
                    stay well within capacity + refill x t, so the detail gives the requests per
                    key and what an ideal single bucket would refuse at that load),
                    many-keys-sync-errors (tollgate_sync_errors_total over the nodes, from the
                    start of the load until Redis is about idle again: 0),
                    many-keys-redis-cores (Redis INFO cpu sys + user over the load and 0.5 s
                    after it / that wall time: at most 0.5) and many-keys-redis-us (Redis CPU
                    from the start of the load until Redis is about idle again, at most 15 s
                    after it, per proxied request: at most 3 us); the Redis rows also give Redis
                    commands per request (INFO commandstats, which counts the commands run
                    inside scripts)
  quota-balanced    a quota of 600 per UTC minute ({"quota": 600, "window": "minute"}) under the
                    balanced row's overload (2 clients per node), the load starting 5 s before a
                    minute boundary and ending 5 s after the next one (about 65 s, and up to a
                    minute's wait for the start: DURATION does not apply); admitted timestamps
                    put into UTC minutes. Rows quota-balanced-start (the partial minute where
                    the load starts onto a fresh quota: a burst through 3 nodes onto an idle
                    bucket, which in the default mode may take up to N x the quota, repaid from
                    the next window as debt: admitted / quota in 0.95..3), quota-balanced (the
                    whole minute inside the run: (admitted + the debt carried into it) / quota
                    in 0.95..1.05: the window gives what the quota leaves after the debt, no
                    more, no less) and quota-balanced-end (the partial minute where it ends,
                    from a boundary under steady overload: at most 1.05 x the quota); the
                    detail gives how soon each window's quota went and the debt it started with
  quota-within      clients within a quota of 6 per UTC minute: KEYS keys each sending 5
                    requests back to back; rows quota-within-sticky and quota-within-spread
                    (sticky and spread as the within- rows): at most 1% not admitted
  override-balanced balanced overload on a limit of capacity 10, 10/s, on two keys at once (2
                    clients per node each): rows override-balanced (a key whose override is
                    capacity 100, 50/s: admitted / (100 + 50 x t)) and override-plain (a key
                    without override: admitted / (10 + 10 x t)), each in 0.95..1.05; the
                    detail gives the capacity and rate every node wrote into each key's hash

Usage: scripts/accuracy.py TOLLGATE_BIN RATING_API_BIN [DURATION] [--only NAME,...]
                           [--keys N] [--many-keys N] [--wrk-connections N] [--pin-wrk CPUS]
                           [--tcp-delay BIN] [--list]
  DURATION (or --duration): seconds of each overload row and of the many-keys load (default 10)
  --keys: keys of the within-limits rows (default 300, at least 200)
  --many-keys: keys of the many-keys rows (default 80000: the scenario is "about 3 requests per
    key in 10 s" at the full request rate the machine drives, and the 2-core development
    machine drives 20,000-26,000 requests/s when otherwise idle, 2.5-3.3 per key with 80,000
    keys; at 50,000 keys it gives 5 per key, where the Redis cost per request is higher, see
    docs/shared-state.md; raise or lower it so that the row's detail shows about 3)
  --wrk-connections: connections of each wrk in the many-keys rows (default 16)
  --pin-wrk: run each wrk under `taskset -c CPUS` (default: not pinned)
  --tcp-delay: the delay proxy (default: examples/tcp_delay next to TOLLGATE_BIN)
"""
import argparse
import fnmatch
import http.client
import json
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
SYNC_MS = 100

# The overload rows (kept from the first version of this script).
OVER_CAP, OVER_RATE = 100, 50.0
# Clients within their limits.
WITHIN_CAP, WITHIN_RATE, WITHIN_REQS = 5, 1.0, 5
# Bursts onto a full bucket.
BURST_CAP, BURST_RATE = 300, 1.0
# Redis stalled.
OUTAGE_CAP, OUTAGE_RATE, OUTAGE_PER_NODE, OUTAGE_S = 50, 20.0, 30.0, 5.0
# Quotas: a minute window under overload, the load from QUOTA_LEAD_S before a boundary to
# QUOTA_TAIL_S after the next one; clients within a quota (WITHIN_REQS requests each).
QUOTA, QUOTA_WINDOW, QUOTA_WINDOW_S = 600, "minute", 60
QUOTA_LEAD_S, QUOTA_TAIL_S = 5.0, 5.0
QUOTA_WITHIN = WITHIN_REQS + 1  # fewer requests than the quota, by one
# An overridden bucket: the limit's own numbers; its overridden key gets OVER_CAP, OVER_RATE.
PLAIN_CAP, PLAIN_RATE = 10, 10.0
# Many keys at the full request rate (the within-limits limit: capacity 5, 1/s).
MANY_NODES = 3
# After the load: the last sync rounds still push what it changed; counted in the Redis window.
MANY_TAIL_S = 5 * SYNC_MS / 1000.0
# Then Redis is polled until it is about idle (the nodes' backlog pushed), at most this long.
MANY_SETTLE_MAX_S, MANY_SETTLE_STEP_S, MANY_IDLE_CORES = 15.0, 0.5, 0.05
MANY_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench", "many_keys.lua")

# Bounds: (lowest, highest), None for no bound on that side.
RATIO = (0.95, 1.05)
RATIO_SKEWED = (0.90, 1.05)
NOT_ADMITTED = (None, 0.01)
BURST_DEFAULT = (None, 3.0)  # default mode: at most N x capacity
# The first version's burst (default mode, capacity per node, so never over 3): at most N x
# capacity, and a full bucket must admit at least about its capacity.
BURST_100 = (0.90, 3.0)
BURST_GUARD = (None, 1.25)
OUTAGE_RATIO = (0.85, 1.10)
QUOTA_OVER = (None, 1.05)  # a partial window: at most 5% over the quota
QUOTA_FRESH = (0.95, 3.0)  # a fresh quota's first window: the default mode's burst bound
SYNC_ERRORS = (0, 0)
REDIS_CORES = (None, 0.5)
REDIS_US_PER_REQUEST = (None, 3.0)

OUTAGE_MEASURE = "admitted during the stall / refill during it"
REDIS_MEASURE = "sum of NODE:consumed - admitted, after the release"
WINDOW_MEASURE = "admitted / refill, from 1 s after the change"
MANY_MEASURE = "not 2xx / requests (wrk)"
QUOTA_MEASURE = "(admitted in a whole UTC minute + debt carried in) / quota"
QUOTA_PART_MEASURE = "admitted in a partial UTC minute / quota"
SYNC_ERRORS_MEASURE = "tollgate_sync_errors_total, sum over the nodes"
REDIS_CORES_MEASURE = "Redis CPU (sys + user) / wall time, cores"
REDIS_US_MEASURE = "Redis CPU / proxied requests, us"


class ScenarioError(Exception):
    """A scenario that could not measure: its rows FAIL with this reason."""


# ---------------------------------------------------------------------------------------------
# Processes.


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_open(port):
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def log_tail(path, lines=3):
    try:
        with open(path, errors="replace") as f:
            text = [l.strip() for l in f if l.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


class Redis:
    """A minimal RESP client: one connection per command (enough for polling)."""

    def __init__(self, port):
        self.port = port

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        with socket.create_connection((HOST, self.port), timeout=5) as s:
            s.sendall(b"".join(out))
            with s.makefile("rb") as f:
                return self._reply(f)

    def _reply(self, f):
        line = f.readline()
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
            return None if n < 0 else f.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(f) for _ in range(n)]
        raise RuntimeError(f"unexpected redis reply {line!r}")


class Env:
    """What every scenario shares: binaries, the Redis, the upstream, the settings."""

    def __init__(self, args, tmp):
        self.tollgate = args.tollgate
        self.api = args.api
        self.tcp_delay = args.tcp_delay
        self.duration = args.duration
        self.keys = args.keys
        self.many_keys = args.many_keys
        self.wrk_connections = args.wrk_connections
        self.pin_wrk = args.pin_wrk
        self.tmp = tmp
        self.redis_port = None
        self.redis = None
        self.api_port = None
        self.procs = []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def start_shared(self):
        self.redis_port = free_port()
        self.spawn(["redis-server", "--port", str(self.redis_port), "--bind", HOST, "--save", "",
                    "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while not port_open(self.redis_port):
            if time.monotonic() > end:
                raise SystemExit(f"redis-server never listened on {self.redis_port}")
            time.sleep(0.05)
        self.redis = Redis(self.redis_port)
        up = self.spawn([self.api, "--listen", f"{HOST}:0"], stdout=subprocess.PIPE, text=True)
        self.api_port = int(up.stdout.readline().rsplit(":", 1)[1])

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Node:
    """One `tollgate run` with a config written for it."""

    def __init__(self, env, name, prefix, redis_port, limit):
        self.env, self.name = env, name
        self.port, self.admin = free_port(), free_port()
        cfg = {
            "node_id": name,
            "listeners": [{"address": f"{HOST}:{self.port}"}],
            "admin": {"address": f"{HOST}:{self.admin}"},
            "redis": {"url": f"redis://{HOST}:{redis_port}/0", "sync_interval_ms": SYNC_MS,
                      "key_prefix": prefix,
                      # ACCURACY_QUIET=0: every change written (no quiet buckets), to compare.
                      "quiet_buckets": os.environ.get("ACCURACY_QUIET", "1") != "0"},
            "upstreams": {"api": {"servers": [f"{HOST}:{env.api_port}"]}},
            "limits": {"acc": limit},
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "api",
                        "limits": ["acc"]}],
            "access_log": False,
            "grace_period_seconds": 1,
        }
        path = os.path.join(env.tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.log = os.path.join(env.tmp, f"{name}.log")
        with open(self.log, "w") as log:
            self.proc = env.spawn([env.tollgate, "run", "-c", path], stdout=log, stderr=log)

    def wait_ready(self, deadline=30.0):
        end = time.monotonic() + deadline
        while not (port_open(self.port) and port_open(self.admin)):
            rc = self.proc.poll()
            if rc is not None:
                raise ScenarioError(f"node {self.name} exited ({rc}) before listening: "
                                    f"{log_tail(self.log)}")
            if time.monotonic() > end:
                raise ScenarioError(f"node {self.name} not listening after {deadline:.0f} s: "
                                    f"{log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()


class Cluster:
    """N nodes sharing one limit under a key prefix of their own (`acc-SCENARIO`); every node
    listening and in the registry (`PREFIX:nodes`) when the constructor returns."""

    def __init__(self, env, scenario, n, limit, redis_port=None):
        self.env, self.scenario = env, scenario
        self.prefix = f"acc-{scenario}"
        self.limit = limit
        self.redis_port = redis_port or env.redis_port
        self.nodes = []
        self.live = 0
        try:
            for _ in range(n):
                self.nodes.append(self._node())
            for node in self.nodes:
                node.wait_ready()
            self.live = n
            self.wait_registry(n)
        except BaseException:
            self.close()
            raise

    def _node(self):
        name = f"{self.scenario}-{len(self.nodes)}"
        return Node(self.env, name, self.prefix, self.redis_port, self.limit)

    @property
    def ports(self):
        return [n.port for n in self.nodes]

    def add(self):
        node = self._node()
        self.nodes.append(node)
        node.wait_ready()
        self.live += 1
        self.wait_registry(self.live)
        return node

    def remove(self, i):
        self.nodes[i].stop()
        self.live -= 1

    def wait_registry(self, n, deadline=15.0):
        end = time.monotonic() + deadline
        seen = None
        while time.monotonic() < end:
            seen = self.env.redis.cmd("HLEN", f"{self.prefix}:nodes")
            if seen == n:
                return
            time.sleep(0.05)
        raise ScenarioError(f"{seen} of {n} nodes in the registry after {deadline:.0f} s")

    def consumed(self, key):
        h = self.env.redis.cmd("HGETALL", f"{self.prefix}:acc:{key}") or []
        return sum(int(v) for k, v in zip(h[::2], h[1::2]) if k.endswith(":consumed"))

    def params(self, key):
        """What the nodes wrote as a key's parameters: {(capacity, rate per second): nodes}."""
        h = self.env.redis.cmd("HGETALL", f"{self.prefix}:acc:{key}") or []
        fields = dict(zip(h[::2], h[1::2]))
        seen = {}
        for k, v in fields.items():
            if k.endswith(":capacity"):
                node = k[: -len(":capacity")]
                rate = int(fields.get(f"{node}:rate", 0)) / 1e9
                seen[(int(v), rate)] = seen.get((int(v), rate), 0) + 1
        return seen

    def close(self):
        for node in self.nodes:
            node.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DelayProc:
    """examples/tcp_delay in front of the Redis, driven through its stdin."""

    def __init__(self, env, rtt_ms):
        self.log = os.path.join(env.tmp, f"tcp_delay-{free_port()}.log")
        with open(self.log, "w") as log:
            self.proc = env.spawn(
                [env.tcp_delay, "--listen", f"{HOST}:0", "--target", f"{HOST}:{env.redis_port}",
                 "--delay-ms", str(rtt_ms / 2)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        self.port = int(self._line(10).rsplit(":", 1)[1])

    def ping_ms(self):
        """The shortest of three PING round trips to Redis through the proxy, in ms."""
        best = None
        for _ in range(3):
            start = time.monotonic()
            Redis(self.port).cmd("PING")
            took = (time.monotonic() - start) * 1000
            best = took if best is None else min(best, took)
        return best

    def _line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise ScenarioError(f"tcp_delay did not answer within {timeout} s: {log_tail(self.log)}")
        return line.strip()

    def cmd(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self._line(5)
        if not reply.startswith("ok"):
            raise ScenarioError(f"tcp_delay {command!r}: {reply}")
        return reply

    def close(self):
        try:
            self.cmd("quit")
            self.proc.wait(timeout=5)
        except (OSError, ScenarioError, subprocess.TimeoutExpired):
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# Clients.


class Conn:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, port):
        self.port = port
        self.con = None

    def open(self):
        self.con = http.client.HTTPConnection(HOST, self.port, timeout=5)
        self.con.connect()

    def get(self, key):
        """The status of one GET /x for `key`; 0 for a connection error."""
        try:
            if self.con is None:
                self.open()
            self.con.request("GET", "/x", headers={"x-api-key": key})
            r = self.con.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self):
        if self.con is not None:
            self.con.close()
            self.con = None


class Tally:
    """What a set of clients got: the moment of each 200, and the count of every status."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok_at = []
        self.statuses = {}

    def add(self, status, at):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.ok_at.append(at)

    @property
    def admitted(self):
        return len(self.ok_at)

    @property
    def sent(self):
        return sum(self.statuses.values())

    def between(self, start, end):
        return sum(1 for t in self.ok_at if start <= t < end)

    def odd(self):
        """Answers other than 200 and 429, for the detail column."""
        rest = {s: n for s, n in self.statuses.items() if s not in (200, 429)}
        if not rest:
            return ""
        return "; unexpected: " + ", ".join(
            f"{n} x {'connection error' if s == 0 else s}" for s, n in sorted(rest.items()))


class Hammer(threading.Thread):
    """One keep-alive connection sending for one key until `stop` is set: as fast as it can, or
    `per_second`; from `start_at` (time.monotonic) on when given."""

    def __init__(self, port, key, tally, stop, per_second=None, start_at=None):
        super().__init__(daemon=True)
        self.conn, self.key, self.tally, self.stop = Conn(port), key, tally, stop
        self.per_second, self.start_at = per_second, start_at

    def run(self):
        if self.start_at is not None:
            self.stop.wait(max(0.0, self.start_at - time.monotonic()))
        next_at = time.monotonic()
        while not self.stop.is_set():
            status = self.conn.get(self.key)
            self.tally.add(status, time.monotonic())
            if self.per_second:
                next_at += 1.0 / self.per_second
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        self.conn.close()


def join_all(threads, deadline=30.0):
    end = time.monotonic() + deadline
    for t in threads:
        t.join(timeout=max(0.1, end - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise ScenarioError(f"clients still running {deadline:.0f} s after they were told to stop")


def overload(ports, weights, duration, key):
    """Clients per node as `weights`, as fast as they can, for `duration` s. Returns the tally
    and the elapsed time (from the first client's start to the last one's end)."""
    tallies, elapsed = overload_keys(ports, weights, duration, [key])
    return tallies[0], elapsed


def overload_keys(ports, weights, duration, keys):
    """`overload` on several keys at once: clients per node as `weights` for each key. Returns
    a tally per key and the elapsed time."""
    tallies, stop = [Tally() for _ in keys], threading.Event()
    clients = [Hammer(port, key, tally, stop) for key, tally in zip(keys, tallies)
               for port, w in zip(ports, weights) for _ in range(w)]
    start = time.monotonic()
    for c in clients:
        c.start()
    time.sleep(duration)
    stop.set()
    join_all(clients)
    return tallies, time.monotonic() - start


def wall_offset():
    """time.time() - time.monotonic(), from the closest of five paired readings: turns the
    tallies' monotonic moments into UTC."""
    best = None
    for _ in range(5):
        a = time.monotonic()
        w = time.time()
        b = time.monotonic()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    return best[1]


def within(ports, keys, tag, spread):
    """`keys` keys each sending WITHIN_REQS requests back to back; 2 client threads per node,
    each on keep-alive connections. Sticky: a thread sends all to one node; spread: request j
    of key k goes to node (k + j) mod N."""
    n, tally = len(ports), Tally()
    threads_n = 2 * n

    def work(t):
        conns = [Conn(p) for p in ports]
        for k in range(t, keys, threads_n):
            key = f"{tag}-{k}"
            for j in range(WITHIN_REQS):
                node = (k + j) % n if spread else t % n
                tally.add(conns[node].get(key), time.monotonic())
        for c in conns:
            c.close()

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads_n)]
    for t in threads:
        t.start()
    join_all(threads, deadline=120.0)
    return tally


def burst(ports, key, per_node, gap=0.0, threads_per_node=4):
    """`per_node` requests through each node, on connections opened beforehand; node i's
    clients start at t0 + i x gap. Returns the tally and the time from t0 to the last answer."""
    tally = Tally()
    t0 = time.monotonic() + 1.0

    def shoot(i, port, count):
        conn = Conn(port)
        try:
            conn.open()
        except OSError:
            pass  # counted as connection errors below
        time.sleep(max(0.0, t0 + i * gap - time.monotonic()))
        for _ in range(count):
            tally.add(conn.get(key), time.monotonic())
        conn.close()

    threads = []
    for i, port in enumerate(ports):
        for t in range(threads_per_node):
            count = per_node // threads_per_node + (t < per_node % threads_per_node)
            threads.append(threading.Thread(target=shoot, args=(i, port, count), daemon=True))
    for t in threads:
        t.start()
    join_all(threads, deadline=60.0)
    return tally, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# Rows.


class Row:
    def __init__(self, name, measure, figure, bound, detail, percent=False):
        self.name, self.measure, self.figure, self.bound = name, measure, figure, bound
        self.detail, self.percent = detail, percent

    @property
    def passed(self):
        lo, hi = self.bound
        return (self.figure is not None and (lo is None or self.figure >= lo)
                and (hi is None or self.figure <= hi))

    def fmt(self, x):
        if self.percent:
            return f"{100 * x:.2f}%"
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    def figure_text(self):
        return "-" if self.figure is None else self.fmt(self.figure)

    def bound_text(self):
        lo, hi = self.bound
        if lo is None and hi is None:
            return "-"
        if lo is not None and lo == hi:
            return f"= {self.fmt(lo)}"
        if lo is None:
            return f"<= {self.fmt(hi)}"
        if hi is None:
            return f">= {self.fmt(lo)}"
        return f"{self.fmt(lo)} .. {self.fmt(hi)}"


def ratio_row(name, measure, admitted, reference, bound, detail):
    return Row(name, measure, admitted / reference if reference else None, bound,
               f"admitted {admitted}, reference {reference:.1f}; {detail}")


def overload_row(name, tally, elapsed, cap, rate, bound, detail):
    return ratio_row(name, RATIO_MEASURE, tally.admitted,
                     cap + rate * elapsed, bound,
                     f"{detail}, {tally.sent} requests in {elapsed:.1f} s{tally.odd()}")


def within_row(name, tally, detail):
    missed = tally.sent - tally.admitted
    return Row(name, SHARE_MEASURE, missed / tally.sent if tally.sent else None,
               NOT_ADMITTED,
               f"{missed} of {tally.sent} not admitted; {detail}{tally.odd()}", percent=True)


def over_limit():
    return {"capacity": OVER_CAP, "refill_per_second": OVER_RATE, "key": ["header:x-api-key"]}


def within_limit():
    return {"capacity": WITHIN_CAP, "refill_per_second": WITHIN_RATE, "key": ["header:x-api-key"]}


def quota_limit(quota):
    return {"quota": quota, "window": QUOTA_WINDOW, "key": ["header:x-api-key"]}


def burst_limit(guard):
    limit = {"capacity": BURST_CAP, "refill_per_second": BURST_RATE, "key": ["header:x-api-key"]}
    if guard:
        limit["burst_guard"] = True
    return limit


# ---------------------------------------------------------------------------------------------
# Scenarios: each returns its rows; an exception turns them all into FAIL with the reason.


def run_overload(env, name, n, weights, bound, redis_port=None, note=""):
    with Cluster(env, name, n, over_limit(), redis_port) as c:
        tally, elapsed = overload(c.ports, weights, env.duration, f"key-{name}")
    clients = ":".join(map(str, weights))
    return [overload_row(name, tally, elapsed, OVER_CAP, OVER_RATE, bound,
                         f"{n} nodes, clients {clients}, capacity {OVER_CAP}, "
                         f"{OVER_RATE:g}/s{note}")]


def run_within(env, name, n, spread, redis_port=None, note=""):
    with Cluster(env, name, n, within_limit(), redis_port) as c:
        tally = within(c.ports, env.keys, f"key-{name}", spread)
    how = "round robin over the nodes" if spread else "one connection to one node per key"
    return [within_row(name, tally, f"{n} nodes, {env.keys} keys x {WITHIN_REQS} requests, "
                                    f"{how}, capacity {WITHIN_CAP}, {WITHIN_RATE:g}/s{note}")]


def run_burst_100(env):
    name = "burst"
    with Cluster(env, name, 3, over_limit()) as c:
        time.sleep(3 * SYNC_MS / 1000.0)  # every node has read the registry since the last joined
        tally, took = burst(c.ports, f"key-{name}", OVER_CAP)
    a = tally.admitted
    detail = f"3 nodes, {OVER_CAP} requests per node at once, took {took:.2f} s{tally.odd()}"
    return [
        ratio_row("burst", BURST_MEASURE, a, float(OVER_CAP), BURST_100, detail),
        ratio_row("burst+refill", "admitted / (capacity + refill during the burst)", a,
                  OVER_CAP + OVER_RATE * took, BURST_100, detail),
    ]


def run_burst_300(env, name, guard, gap):
    with Cluster(env, name, 3, burst_limit(guard)) as c:
        time.sleep(3 * SYNC_MS / 1000.0)
        tally, took = burst(c.ports, f"key-{name}", 2 * BURST_CAP, gap=gap)
    bound = BURST_GUARD if guard else BURST_DEFAULT
    mode = '"burst_guard": true' if guard else "default mode"
    start = f"loads {gap * 1000:.0f} ms apart" if gap else "loads together"
    return [ratio_row(name, BURST_MEASURE, tally.admitted, float(BURST_CAP), bound,
                      f"3 nodes, {mode}, capacity {BURST_CAP}, {BURST_RATE:g}/s, "
                      f"{2 * BURST_CAP} requests per node, {start}, took {took:.2f} s; "
                      f"admitted / (capacity + refill) "
                      f"{tally.admitted / (BURST_CAP + BURST_RATE * took):.3f}{tally.odd()}")]


def run_delayed(env, name, rtt_ms, kind):
    with DelayProc(env, rtt_ms) as proxy:
        note = (f", Redis {rtt_ms} ms round trip away (PING through tcp_delay: "
                f"{proxy.ping_ms():.0f} ms)")
        if kind == "balanced":
            return run_overload(env, name, 3, [2, 2, 2], RATIO, proxy.port, note)
        if kind == "one-busy":
            return run_overload(env, name, 3, [4, 0, 0], RATIO_SKEWED, proxy.port, note)
        return run_within(env, name, 3, kind == "within-spread", proxy.port, note)


def run_outage(env):
    name, key = "outage", "key-outage"
    limit = {"capacity": OUTAGE_CAP, "refill_per_second": OUTAGE_RATE, "key": ["header:x-api-key"]}
    with DelayProc(env, 0) as proxy, Cluster(env, name, 3, limit, proxy.port) as c:
        tally, stop = Tally(), threading.Event()
        clients = [Hammer(p, key, tally, stop, per_second=OUTAGE_PER_NODE) for p in c.ports]
        for h in clients:
            h.start()
        try:
            time.sleep(3.0)
            proxy.cmd("hold")
            held_at = time.monotonic()
            time.sleep(OUTAGE_S)
            proxy.cmd("release")
            released_at = time.monotonic()
            time.sleep(2.0)
        finally:
            stop.set()
            join_all(clients)
        outage = released_at - held_at
        during = tally.between(held_at, released_at)
        # Everything admitted must reach Redis once it is back.
        end, consumed = time.monotonic() + 10.0, None
        while time.monotonic() < end:
            consumed = c.consumed(key)
            if consumed == tally.admitted:
                break
            time.sleep(0.1)
    setup = (f"3 nodes, capacity {OUTAGE_CAP}, {OUTAGE_RATE:g}/s, {OUTAGE_PER_NODE:g} requests/s "
             f"per node, Redis held {outage:.2f} s")
    return [
        ratio_row("outage", OUTAGE_MEASURE, during, OUTAGE_RATE * outage, OUTAGE_RATIO,
                  f"{setup}{tally.odd()}"),
        Row("outage-redis", REDIS_MEASURE,
            None if consumed is None else consumed - tally.admitted, (0, 0),
            f"consumed {consumed}, admitted {tally.admitted} (of {tally.sent} requests)"),
    ]


def run_join_leave(env):
    name, key = "join-leave", "key-join-leave"
    phase = max(env.duration / 3.0, 3.0)
    with Cluster(env, name, 3, over_limit()) as c:
        tally = Tally()
        stops = []
        clients = []

        def load(port):
            stop = threading.Event()
            stops.append(stop)
            mine = [Hammer(port, key, tally, stop) for _ in range(2)]
            clients.extend(mine)
            for h in mine:
                h.start()
            return stop, mine

        first_stop, first_clients = load(c.ports[0])
        for port in c.ports[1:]:
            load(port)
        try:
            time.sleep(phase)
            joined = c.add()
            load(joined.port)
            joined_at = time.monotonic()
            time.sleep(phase)
            first_stop.set()
            join_all(first_clients)
            left_at = time.monotonic()
            c.remove(0)
            time.sleep(phase)
            end_at = time.monotonic()
        finally:
            for s in stops:
                s.set()
            join_all(clients)
    rows = []
    for row, start, end, nodes in (("join", joined_at, left_at, "3 -> 4"),
                                   ("leave", left_at, end_at, "4 -> 3")):
        w0 = start + 1.0
        rows.append(ratio_row(row, WINDOW_MEASURE,
                              tally.between(w0, end), OVER_RATE * (end - w0), RATIO,
                              f"nodes {nodes}, 2 clients each, window {end - w0:.1f} s, "
                              f"capacity {OVER_CAP}, {OVER_RATE:g}/s{tally.odd()}"))
    return rows


def utc(t):
    return time.strftime("%H:%M:%S", time.gmtime(t))


def params_text(params):
    """What Cluster.params found, for the detail column."""
    if not params:
        return "no node wrote the key's hash"
    return ", ".join(f"{n} node{'s' if n > 1 else ''} capacity {cap}, {rate:g}/s"
                     for (cap, rate), n in sorted(params.items()))


def run_quota_balanced(env):
    name, key, weights = "quota-balanced", "key-quota-balanced", [2, 2, 2]
    with Cluster(env, name, 3, quota_limit(QUOTA)) as c:
        off = wall_offset()
        now = time.time()
        # The first boundary at least QUOTA_LEAD_S away (and half a second to spare).
        b1 = (int((now + QUOTA_LEAD_S + 0.5) // QUOTA_WINDOW_S) + 1) * QUOTA_WINDOW_S
        b2 = b1 + QUOTA_WINDOW_S
        start_wall, end_wall = b1 - QUOTA_LEAD_S, b2 + QUOTA_TAIL_S
        print(f"   waiting {start_wall - now:.0f} s for {utc(start_wall)} UTC, {QUOTA_LEAD_S:g} s "
              f"before a minute boundary; then {end_wall - start_wall:.0f} s of load", flush=True)
        tally, stop = Tally(), threading.Event()
        clients = [Hammer(port, key, tally, stop, start_at=start_wall - off)
                   for port, w in zip(c.ports, weights) for _ in range(w)]
        for h in clients:
            h.start()
        try:
            time.sleep(max(0.0, end_wall - off - time.monotonic()))
        finally:
            stop.set()
            join_all(clients)
        ended = time.monotonic() + off
        params = c.params(key)
    ok = sorted(t + off for t in tally.ok_at)
    parts = ([t for t in ok if t < b1], [t for t in ok if b1 <= t < b2],
             [t for t in ok if t >= b2])
    setup = (f"3 nodes, clients 2:2:2, quota {QUOTA} per UTC {QUOTA_WINDOW}; the key's hash: "
             f"{params_text(params)}; {tally.sent} requests from {utc(start_wall)} to "
             f"{utc(ended)} UTC{tally.odd()}")

    def spent(times, since):
        """How soon the quota went, and what was admitted after the window's first second."""
        late = sum(1 for t in times if t >= since + 1.0)
        if len(times) >= QUOTA:
            went = f"the {QUOTA}th admitted {times[QUOTA - 1] - since:.2f} s in"
        else:
            went = ("never reached the quota" if not times else
                    f"the quota not reached, the last admitted {times[-1] - since:.2f} s in")
        return f"{went}, {late} admitted later than 1 s in"

    # The shared bucket takes an overshoot from the next window as debt: what each window had
    # left after the debt of those before it, and how far its admissions went beyond that.
    debt, carried, debts_in = 0, [], []
    for i, part in enumerate(parts):
        left = QUOTA - debt
        beyond = len(part) - left
        debts_in.append(debt)
        carried.append(f"{'a fresh quota' if i == 0 else f'debt from before {debt}'} "
                       f"({left} left): {beyond:+d} beyond that")
        debt = max(0, beyond)

    return [
        ratio_row("quota-balanced-start", QUOTA_PART_MEASURE, len(parts[0]), float(QUOTA),
                  QUOTA_FRESH, f"{b1 - start_wall:.1f} s from the load's start to {utc(b1)} "
                              f"UTC; {spent(parts[0], start_wall)}; {carried[0]}; {setup}"),
        ratio_row("quota-balanced", QUOTA_MEASURE, len(parts[1]) + debts_in[1], float(QUOTA), RATIO,
                  f"the minute {utc(b1)}..{utc(b2)} UTC; {spent(parts[1], b1)}; {carried[1]}; "
                  f"{setup}"),
        ratio_row("quota-balanced-end", QUOTA_PART_MEASURE, len(parts[2]), float(QUOTA),
                  QUOTA_OVER, f"{ended - b2:.1f} s from {utc(b2)} UTC to the load's end; "
                              f"{spent(parts[2], b2)}; {carried[2]}; {setup}"),
    ]


def run_quota_within(env):
    name, rows = "quota-within", []
    with Cluster(env, name, 3, quota_limit(QUOTA_WITHIN)) as c:
        for row, spread in (("quota-within-sticky", False), ("quota-within-spread", True)):
            first = int(time.time() // QUOTA_WINDOW_S)
            tally = within(c.ports, env.keys, f"key-{row}", spread)
            crossed = int(time.time() // QUOTA_WINDOW_S) != first
            how = "round robin over the nodes" if spread else "one connection to one node per key"
            rows.append(within_row(
                row, tally, f"3 nodes, {env.keys} keys x {WITHIN_REQS} requests, {how}, quota "
                            f"{QUOTA_WITHIN} per UTC {QUOTA_WINDOW}"
                            f"{' (the run crossed a minute boundary)' if crossed else ''}"))
    return rows


def run_override(env):
    name, weights = "override-balanced", [2, 2, 2]
    key, plain = "key-override-balanced", "key-override-plain"
    limit = {"capacity": PLAIN_CAP, "refill_per_second": PLAIN_RATE, "key": ["header:x-api-key"],
             "overrides": {key: {"capacity": OVER_CAP, "refill_per_second": OVER_RATE}}}
    with Cluster(env, name, 3, limit) as c:
        (t_key, t_plain), elapsed = overload_keys(c.ports, weights, env.duration, [key, plain])
        p_key, p_plain = c.params(key), c.params(plain)
    setup = (f"3 nodes, clients 2:2:2 on each of two keys at once, a limit of capacity "
             f"{PLAIN_CAP}, {PLAIN_RATE:g}/s")
    return [
        overload_row("override-balanced", t_key, elapsed, OVER_CAP, OVER_RATE, RATIO,
                     f"{setup}, this key's override capacity {OVER_CAP}, {OVER_RATE:g}/s; "
                     f"its hash: {params_text(p_key)}"),
        overload_row("override-plain", t_plain, elapsed, PLAIN_CAP, PLAIN_RATE, RATIO,
                     f"{setup}, this key without override; its hash: {params_text(p_plain)}"),
    ]


# ---------------------------------------------------------------------------------------------
# Many keys at the full request rate: wrk, node metrics, Redis INFO.


def http_get(port, path, timeout=5):
    con = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        con.request("GET", path)
        r = con.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        con.close()


def metric_sum(text, name, labels=None):
    """The sum of every sample of `name` (exact name; with `labels`, only samples whose label
    set contains each NAME="VALUE" of it) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            continue
        total += float(m.group(3))
    return total


def node_metrics(nodes):
    """What the many-keys rows read from every node's admin /metrics, summed over the nodes
    (and the sync errors per node)."""
    out = {"sync_errors": 0.0, "limited": 0.0, "requests": 0.0, "sync_s": 0.0, "rounds": 0.0,
           "buckets": 0.0, "quiet_forgotten": 0.0, "quiet_synced": 0.0, "per_node_errors": []}
    for node in nodes:
        status, text = http_get(node.admin, "/metrics")
        if status != 200:
            raise ScenarioError(f"node {node.name}: /metrics answered {status}")
        errors = metric_sum(text, "tollgate_sync_errors_total")
        out["per_node_errors"].append(int(errors))
        out["sync_errors"] += errors
        out["limited"] += metric_sum(text, "tollgate_requests_total", {"outcome": "limited"})
        out["requests"] += metric_sum(text, "tollgate_requests_total")
        out["sync_s"] += metric_sum(text, "tollgate_sync_duration_seconds_sum")
        out["rounds"] += metric_sum(text, "tollgate_sync_duration_seconds_count")
        out["buckets"] += metric_sum(text, "tollgate_buckets_active")
        out["quiet_forgotten"] += metric_sum(text, "tollgate_quiet_buckets_total",
                                             {"result": "forgotten"})
        out["quiet_synced"] += metric_sum(text, "tollgate_quiet_buckets_total", {"result": "synced"})
    return out


def redis_info(redis):
    """Redis CPU seconds (sys + user) and the calls of each command (INFO commandstats: the
    commands run inside scripts count too), with this script's own INFO taken out."""
    cpu = {}
    for line in redis.cmd("INFO", "cpu").splitlines():
        k, _, v = line.partition(":")
        if k in ("used_cpu_sys", "used_cpu_user"):
            cpu[k] = float(v)
    calls = {}
    for line in redis.cmd("INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
        if m:
            calls[m.group(1)] = int(m.group(2))
    calls.pop("info", None)
    if len(cpu) != 2:
        raise ScenarioError(f"INFO cpu without used_cpu_sys/used_cpu_user: {cpu}")
    return sum(cpu.values()), calls


def ideal_refused(keys, requests, seconds, cap, rate, seed=1):
    """The share of `requests` that one ideal bucket per key (capacity `cap`, `rate`/s, full at
    the start) refuses when they fall on `keys` keys uniformly at random and uniformly over
    `seconds`: the reference for the many-keys row (0 while a key's requests stay well within
    cap + rate x seconds)."""
    if not requests or not keys:
        return 0.0
    rnd = random.Random(seed)
    per_key = [[] for _ in range(keys)]
    for _ in range(requests):
        per_key[rnd.randrange(keys)].append(rnd.random() * seconds)
    refused = 0
    for times in per_key:
        if len(times) <= cap:
            continue
        times.sort()
        tokens, last = float(cap), 0.0
        for t in times:
            tokens = min(float(cap), tokens + (t - last) * rate)
            last = t
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                refused += 1
    return refused / requests


def log_warnings(paths):
    """The nodes' own WARN and ERROR lines (tollgate's, not pingora's: wrk closing its
    connections at the end makes a few of those): how many, and the first one's message."""
    lines = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                lines += [l.strip() for l in f
                          if re.search(r" (WARN|ERROR) tollgate", l)]
        except OSError:
            pass
    if not lines:
        return "no tollgate WARN or ERROR in the node logs"
    first = re.sub(r"^\S+\s+", "", min(lines))  # the earliest, without its timestamp
    return f"{len(lines)} tollgate WARN/ERROR lines in the node logs, the first: {first[:200]}"


def parse_wrk(path):
    with open(path, errors="replace") as f:
        text = f.read()
    m = re.search(r"^MANYKEYS (.*)$", text, re.M)
    if not m:
        raise ScenarioError(f"wrk printed no summary ({path}): {text.strip()[-300:]}")
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def run_many_keys(env):
    name = "many-keys"
    keys, conns, secs = env.many_keys, env.wrk_connections, env.duration
    if shutil.which("wrk") is None:
        raise ScenarioError("wrk missing (scripts/accuracy.sh installs it; or apt-get install wrk)")
    if env.pin_wrk and shutil.which("taskset") is None:
        raise ScenarioError("--pin-wrk needs taskset (util-linux)")
    with Cluster(env, name, MANY_NODES, within_limit()) as c:
        tag = f"mk{int(time.time())}"  # keys of this run only, whatever Redis still holds
        before_nodes = node_metrics(c.nodes)
        cpu0, calls0 = redis_info(env.redis)
        t0 = time.monotonic()
        procs = []
        for i, node in enumerate(c.nodes):
            out = os.path.join(env.tmp, f"wrk-{name}-{i}.out")
            argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs:g}s", "-s", MANY_LUA,
                    f"http://{HOST}:{node.port}/", "--", str(keys), tag, str(1000 + i), "/x"]
            if env.pin_wrk:
                argv = ["taskset", "-c", env.pin_wrk] + argv
            with open(out, "w") as f:
                procs.append((env.spawn(argv, stdout=f, stderr=subprocess.STDOUT), out))
        for p, out in procs:
            try:
                p.wait(timeout=secs + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                raise ScenarioError(f"wrk still running {secs + 30:g} s after it started")
            if p.returncode != 0:
                raise ScenarioError(f"wrk exited {p.returncode}: {log_tail(out)}")
        time.sleep(MANY_TAIL_S)
        cpu1, calls1 = redis_info(env.redis)
        wall = time.monotonic() - t0
        after_nodes = node_metrics(c.nodes)
        # What the nodes still push after that (a backlog of changed buckets) is Redis work
        # the requests caused too: µs per request counts it, until Redis is about idle.
        settle_end, cpu2, calls2, settled = time.monotonic() + MANY_SETTLE_MAX_S, cpu1, calls1, False
        while time.monotonic() < settle_end:
            time.sleep(MANY_SETTLE_STEP_S)
            cpu_next, calls2 = redis_info(env.redis)
            step, cpu2 = cpu_next - cpu2, cpu_next
            if step < MANY_IDLE_CORES * MANY_SETTLE_STEP_S:
                settled = True
                break
        drain_s = time.monotonic() - t0 - wall
        after_drain = node_metrics(c.nodes)
        gone = [n.name for n in c.nodes if n.proc.poll() is not None]
        if gone:
            raise ScenarioError(f"node(s) {', '.join(gone)} exited during the load")
    w = [parse_wrk(out) for _, out in procs]
    warnings = log_warnings([n.log for n in c.nodes])
    reqs = sum(x["requests"] for x in w)
    non2xx = sum(x["non2xx"] for x in w)
    sock = {k: sum(x[k] for x in w) for k in ("connect", "read", "write", "timeout")}
    load_s = max(x["duration_us"] for x in w) / 1e6
    limited = int(after_drain["limited"] - before_nodes["limited"])
    proxied = int(after_drain["requests"] - before_nodes["requests"])
    errors_load = int(after_nodes["sync_errors"] - before_nodes["sync_errors"])
    errors = int(after_drain["sync_errors"] - before_nodes["sync_errors"])
    per_node_errors = [a - b for a, b in zip(after_drain["per_node_errors"],
                                             before_nodes["per_node_errors"])]
    rounds = after_drain["rounds"] - before_nodes["rounds"]
    sync_s = after_drain["sync_s"] - before_nodes["sync_s"]
    cpu_load, cpu_all = cpu1 - cpu0, cpu2 - cpu0
    cmds = {k: v - calls0.get(k, 0) for k, v in calls2.items() if v - calls0.get(k, 0) > 0}
    total_cmds = sum(cmds.values())
    load_cmds = sum(v - calls0.get(k, 0) for k, v in calls1.items())

    rps = reqs / load_s if load_s else 0.0
    per_key = reqs / keys
    allowance = WITHIN_CAP + WITHIN_RATE * load_s
    ideal = ideal_refused(keys, reqs, load_s, WITHIN_CAP, WITHIN_RATE)
    pin = f", wrk pinned to CPUs {env.pin_wrk}" if env.pin_wrk else ""
    setup = (f"{MANY_NODES} nodes, {keys} keys, capacity {WITHIN_CAP}, {WITHIN_RATE:g}/s; "
             f"wrk -t1 -c{conns} per node{pin}, {load_s:.1f} s: {reqs} requests, "
             f"{rps:.0f}/s")
    sizing = (f"{per_key:.2f} requests per key ({per_key / load_s:.3f}/s per key) where a key "
              f"may take {allowance:g} ({WITHIN_CAP} + {WITHIN_RATE:g} x {load_s:.1f} s); "
              f"one ideal bucket per key would refuse {100 * ideal:.3f}% at this load")
    if ideal > NOT_ADMITTED[1] / 10:
        sizing += (" - the load is too close to the limit for this bound to mean anything: "
                   "raise --many-keys")
    bad = non2xx + sum(sock.values())
    odd = ", ".join(f"{v} {k}" for k, v in sock.items() if v)
    per_req = (lambda x: x / reqs) if reqs else (lambda x: 0.0)
    top = sorted(cmds.items(), key=lambda kv: -kv[1])[:6]
    top_text = ", ".join(f"{k} {per_req(v):.2f}" for k, v in top)
    drain = (f"then {drain_s:.1f} s until Redis was about idle (under {MANY_IDLE_CORES:g} core)"
             if settled else f"Redis still busy {drain_s:.1f} s after that (not settled)")
    commands = (f"{per_req(total_cmds):.2f} Redis commands per request ({total_cmds} in all, "
                f"{load_cmds} in the load window; INFO commandstats, commands inside scripts "
                f"included; per request: {top_text})")
    forgotten = after_drain["quiet_forgotten"] - before_nodes["quiet_forgotten"]
    synced = after_drain["quiet_synced"] - before_nodes["quiet_synced"]
    sync = (f"{rounds:.0f} sync rounds went through (tollgate_sync_duration_seconds_count "
            f"over the nodes), {1000 * sync_s / rounds if rounds else 0:.0f} ms each on average; "
            f"quiet buckets checked: {forgotten:.0f} forgotten, {synced:.0f} synced "
            f"(tollgate_quiet_buckets_total)")
    return [
        Row(name, MANY_MEASURE, bad / reqs if reqs else None, NOT_ADMITTED,
            f"{bad} of {reqs} not 2xx ({limited} x 429 by the nodes' metrics"
            f"{', socket errors: ' + odd if odd else ''}; nodes counted {proxied} requests); "
            f"{setup}; {sizing}", percent=True),
        Row(f"{name}-sync-errors", SYNC_ERRORS_MEASURE, errors, SYNC_ERRORS,
            f"{errors_load} in the load window ({wall:.1f} s), {errors - errors_load} after it "
            f"({drain}); per node {per_node_errors}; {sync}; {warnings}; {setup}"),
        Row(f"{name}-redis-cores", REDIS_CORES_MEASURE, cpu_load / wall if wall else None,
            REDIS_CORES,
            f"Redis CPU {cpu_load:.2f} s over {wall:.2f} s (the load and {MANY_TAIL_S:g} s "
            f"after it); {commands}; {sync}; {setup}"),
        Row(f"{name}-redis-us", REDIS_US_MEASURE, 1e6 * per_req(cpu_all) if reqs else None,
            REDIS_US_PER_REQUEST,
            f"Redis CPU {cpu_all:.2f} s: {cpu_load:.2f} s in the load window ({wall:.1f} s, "
            f"{1e6 * per_req(cpu_load):.1f} us per request), {cpu_all - cpu_load:.2f} s after "
            f"it ({drain}); {commands}; {sync}; {setup}"),
    ]

class Scenario:
    """A run that measures `rows`: (name, measure, bound, percent) each, so that rows a failed
    run could not measure still show what they compare."""

    def __init__(self, name, rows, run):
        self.name, self.rows, self.run = name, rows, run

    @property
    def names(self):
        return [r[0] for r in self.rows]

    def unmeasured(self, reason):
        return [Row(n, m, None, b, f"not measured: {reason}", percent=p)
                for n, m, b, p in self.rows]


RATIO_MEASURE = "admitted / (capacity + rate x t)"
SHARE_MEASURE = "not admitted / requests"
BURST_MEASURE = "admitted / capacity"


def scenarios():
    def over(name, bound):
        return [(name, RATIO_MEASURE, bound, False)]

    def share(name):
        return [(name, SHARE_MEASURE, NOT_ADMITTED, True)]

    s = [
        Scenario("balanced", over("balanced", RATIO),
                 lambda e: run_overload(e, "balanced", 3, [2, 2, 2], RATIO)),
        Scenario("skewed", over("skewed", RATIO_SKEWED),
                 lambda e: run_overload(e, "skewed", 3, [8, 1, 1], RATIO_SKEWED)),
        Scenario("one-busy", over("one-busy", RATIO_SKEWED),
                 lambda e: run_overload(e, "one-busy", 3, [4, 0, 0], RATIO_SKEWED)),
        Scenario("burst", [("burst", BURST_MEASURE, BURST_100, False),
                           ("burst+refill", "admitted / (capacity + refill during the burst)",
                            BURST_100, False)], run_burst_100),
        Scenario("within-sticky", share("within-sticky"),
                 lambda e: run_within(e, "within-sticky", 3, False)),
        Scenario("within-spread", share("within-spread"),
                 lambda e: run_within(e, "within-spread", 3, True)),
        Scenario("burst-300", [("burst-300", BURST_MEASURE, BURST_DEFAULT, False)],
                 lambda e: run_burst_300(e, "burst-300", False, 0.0)),
    ]
    for name, gap in (("guard-together", 0.0), ("guard-50ms", 0.05), ("guard-150ms", 0.15)):
        s.append(Scenario(name, [(name, BURST_MEASURE, BURST_GUARD, False)],
                          lambda e, name=name, gap=gap: run_burst_300(e, name, True, gap)))
    for rtt in (80, 150):
        for kind in ("balanced", "one-busy", "within-sticky", "within-spread"):
            name = f"rtt{rtt}-{kind}"
            rows = (share(name) if kind.startswith("within")
                    else over(name, RATIO if kind == "balanced" else RATIO_SKEWED))
            s.append(Scenario(name, rows, lambda e, name=name, rtt=rtt, kind=kind:
                              run_delayed(e, name, rtt, kind)))
    s += [
        Scenario("outage", [("outage", OUTAGE_MEASURE, OUTAGE_RATIO, False),
                            ("outage-redis", REDIS_MEASURE, (0, 0), False)], run_outage),
        Scenario("join-leave", [("join", WINDOW_MEASURE, RATIO, False),
                                ("leave", WINDOW_MEASURE, RATIO, False)], run_join_leave),
        Scenario("5n-balanced", over("5n-balanced", RATIO),
                 lambda e: run_overload(e, "5n-balanced", 5, [2] * 5, RATIO)),
        Scenario("5n-within-sticky", share("5n-within-sticky"),
                 lambda e: run_within(e, "5n-within-sticky", 5, False)),
        Scenario("5n-within-spread", share("5n-within-spread"),
                 lambda e: run_within(e, "5n-within-spread", 5, True)),
        Scenario("many-keys", [
            ("many-keys", MANY_MEASURE, NOT_ADMITTED, True),
            ("many-keys-sync-errors", SYNC_ERRORS_MEASURE, SYNC_ERRORS, False),
            ("many-keys-redis-cores", REDIS_CORES_MEASURE, REDIS_CORES, False),
            ("many-keys-redis-us", REDIS_US_MEASURE, REDIS_US_PER_REQUEST, False),
        ], run_many_keys),
        Scenario("quota-balanced", [
            ("quota-balanced-start", QUOTA_PART_MEASURE, QUOTA_FRESH, False),
            ("quota-balanced", QUOTA_MEASURE, RATIO, False),
            ("quota-balanced-end", QUOTA_PART_MEASURE, QUOTA_OVER, False),
        ], run_quota_balanced),
        Scenario("quota-within", share("quota-within-sticky") + share("quota-within-spread"),
                 run_quota_within),
        Scenario("override-balanced", over("override-balanced", RATIO)
                 + over("override-plain", RATIO), run_override),
    ]
    return s


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tollgate")
    p.add_argument("api")
    p.add_argument("duration_pos", nargs="?", type=float, metavar="DURATION")
    p.add_argument("--duration", type=float, help="seconds of each overload row (default 10)")
    p.add_argument("--only", help="comma-separated scenario or row names (shell patterns allowed)")
    p.add_argument("--keys", type=int, default=300, help="keys of the within-limits rows")
    p.add_argument("--many-keys", type=int, default=80000, help="keys of the many-keys rows")
    p.add_argument("--wrk-connections", type=int, default=16,
                   help="connections of each wrk in the many-keys rows")
    p.add_argument("--pin-wrk", metavar="CPUS", help="taskset -c CPUS for each wrk (many-keys)")
    p.add_argument("--tcp-delay", help="the delay proxy (examples/tcp_delay)")
    p.add_argument("--list", action="store_true", help="list the scenarios and their rows")
    args = p.parse_intermixed_args()
    args.duration = args.duration or args.duration_pos or 10.0
    if args.keys < 200:
        p.error("--keys must be at least 200")
    if args.many_keys < 1 or args.wrk_connections < 1:
        p.error("--many-keys and --wrk-connections must be at least 1")
    if args.tcp_delay is None:
        args.tcp_delay = os.path.join(os.path.dirname(args.tollgate), "examples", "tcp_delay")
    return args


def select_scenarios(all_, only):
    if not only:
        return all_
    patterns = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [s for s in all_ if any(fnmatch.fnmatchcase(n, pat) for pat in patterns
                                     for n in [s.name] + s.names)]
    unknown = [pat for pat in patterns
               if not any(fnmatch.fnmatchcase(n, pat) for s in all_ for n in [s.name] + s.names)]
    if unknown:
        print(f"--only: no scenario or row named {', '.join(unknown)} (see --list)",
              file=sys.stderr)
        sys.exit(2)
    return chosen


def print_table(rows, args):
    print()
    print(f"### Accuracy: sync {SYNC_MS} ms, overload rows {args.duration:g} s, "
          f"within-limits rows {args.keys} keys, many-keys rows {args.many_keys} keys")
    print()
    print("| scenario | measure | figure | bound | result | detail |")
    print("|---|---|---:|---|---|---|")
    for r in rows:
        detail = r.detail.replace("|", "\\|")
        print(f"| {r.name} | {r.measure} | {r.figure_text()} | {r.bound_text()} | "
              f"{'PASS' if r.passed else 'FAIL'} | {detail} |")
    failed = [r.name for r in rows if not r.passed]
    print()
    print(f"{len(rows) - len(failed)} of {len(rows)} rows pass"
          + (f"; failing: {', '.join(failed)}" if failed else ""))


def main():
    args = parse_args()
    all_ = scenarios()
    if args.list:
        for s in all_:
            print(f"{s.name:<22} rows: {', '.join(s.names)}")
        return 0
    chosen = select_scenarios(all_, args.only)
    tmp = tempfile.mkdtemp(prefix="tollgate-accuracy-")
    env = Env(args, tmp)
    rows = []
    try:
        env.start_shared()
        for s in chosen:
            started = time.monotonic()
            print(f"== {s.name} ...", flush=True)
            try:
                got = s.run(env)
            except ScenarioError as e:
                got = s.unmeasured(e)
            except Exception as e:  # a bug or a crash in one scenario does not stop the others
                got = s.unmeasured(f"{type(e).__name__}: {e}")
            for r in got:
                print(f"   {r.name}: {r.figure_text()} (bound {r.bound_text()}) "
                      f"{'PASS' if r.passed else 'FAIL'}", flush=True)
            print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
            rows.extend(got)
    finally:
        env.stop_all()
    print_table(rows, args)
    print(f"\nlogs and configs: {tmp}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
