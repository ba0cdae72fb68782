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
                    bucket, which in the default mode may take up to N x the quota; the
                    overshoot is that window's alone, never carried into the next: admitted /
                    quota in 0.95..3), quota-balanced (the whole minute inside the run, which
                    starts with the whole quota whatever the minute before took: admitted /
                    quota in 0.95..1.05) and quota-balanced-end (the partial minute where it
                    ends, from a boundary under steady overload: at most 1.05 x the quota); the
                    detail gives how soon each window's quota went and how far its admissions
                    went beyond the quota
  quota-within      clients within a quota of 6 per UTC minute: KEYS keys each sending 5
                    requests back to back; rows quota-within-sticky and quota-within-spread
                    (sticky and spread as the within- rows): at most 1% not admitted
  override-balanced balanced overload on a limit of capacity 10, 10/s, on two keys at once (2
                    clients per node each): rows override-balanced (a key whose override is
                    capacity 100, 50/s: admitted / (100 + 50 x t)) and override-plain (a key
                    without override: admitted / (10 + 10 x t)), each in 0.95..1.05; the
                    detail gives the capacity and rate every node wrote into each key's hash
  concurrency-within-sticky, concurrency-within-spread
                    a concurrency limit ({"max_in_flight": 12}) and a client within it: 12
                    threads of one key, each sending GET /slow?ms=200 (rating-api) after the
                    last one's answer on its keep-alive connection for DURATION s, all through
                    one node (sticky) or 4 per node (spread): not admitted / requests = 0. No
                    timing enters: sticky, the node knows its own slots at once and no other
                    node holds any; spread, each node holds at most its fair share (12 / 3
                    live nodes), which it may always hold; and a request's slot is given back
                    before its connection reads the next request. One refusal is a bug, so
                    the bound is 0, not 1%. The detail gives what the upstream saw in flight
  concurrency-overload, concurrency-overload-guard
                    the same limit under overload: 24 clients per node on the one key for
                    DURATION s (/slow?ms=200; a refused client tries again after 10 to 30
                    ms), default mode and "burst_guard": true. The scenario's own rating-api
                    is polled (GET /inflight?reset=1, every 10 ms) for the requests it serves
                    at once: each poll gives the count then and the exact peak since the last
                    one. Warmed up: from 1 s after the clients start (5 requests' length, 10
                    syncs). Rows concurrency-overload and concurrency-overload-guard (the mean
                    of the polls once warmed up: at least 12 x 0.8), concurrency-overload-start
                    (default mode, the peak in the first second: each node may fill the limit
                    from a view one sync old, so at a jump at most 3 x 12),
                    concurrency-overload-max (default mode, the peak once warmed up: the
                    limit, 12, as the design states it) and concurrency-overload-guard-max
                    (burst_guard, the peak over the whole run, the jump included: at most 12
                    x 1.25), and concurrency-overload-held and concurrency-overload-guard-held
                    (every slot given back: the sum over the nodes of NODE:consumed -
                    NODE:credit in Redis, polled up to 5 s after the clients stop: 0); the
                    detail gives how long and how often the upstream had more than 12
  cost-balanced     a response cost: capacity 3000, 3000/s, the route's entry {"limit",
                    "cost": {"response_header": "x-usage-tokens", "reserve": 10}}, requests to
                    /v1/complete?ms=20&tokens=N with N uniform in 1..200, the balanced row's
                    overload (2 clients per node) for DURATION s: the tokens the upstream
                    reported on the 200s / (capacity + rate x t) in 0.95 .. 1.05 + E /
                    (capacity + rate x t), where E = 6 x (200 - 10): settling charges a
                    request's excess over its reserve without asking, so each request in flight
                    (one per client at most) may take the bucket that far into debt at the end
                    of the run (about 1.085 at 10 s); the detail compares Redis's consumed -
                    credit with the tokens reported
  cost-within       clients within a response-cost limit (capacity 600, 300/s, reserve 10):
                    24 keys at once, each 5 requests/s with N uniform in 1..40 (at most 200
                    tokens/s, under the refill) for 6 s; rows cost-within-sticky (a key through
                    one node) and cost-within-spread (round robin): at most 1% not admitted

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
# Concurrency limits: max_in_flight CONC_MAX on one key, requests to /slow?ms=CONC_MS. Overload:
# CONC_CLIENTS clients per node, a refused one trying again after 0.5 to 1.5 x
# CONC_REFUSED_PAUSE_S; the upstream's /inflight polled every CONC_SAMPLE_S; "warmed up" from
# CONC_WARMUP_S after the clients start (5 requests' length, 10 syncs).
CONC_MAX, CONC_MS = 12, 200
CONC_PATH = f"/slow?ms={CONC_MS}"
CONC_CLIENTS, CONC_REFUSED_PAUSE_S = 24, 0.02
CONC_SAMPLE_S, CONC_WARMUP_S = 0.01, 1.0
# Response costs: a bucket charged the x-usage-tokens of /v1/complete?ms=COST_MS&tokens=N.
# Overload: N uniform in COST_TOKENS, reserve COST_RESERVE. Within: COSTW_KEYS keys at once,
# each COSTW_PER_S requests/s with N uniform in COSTW_TOKENS for COSTW_S s (at most 200
# tokens/s per key, under the refill of 300/s).
USAGE_HEADER = "x-usage-tokens"
COST_CAP, COST_RATE, COST_RESERVE, COST_TOKENS, COST_MS = 3000, 3000.0, 10, (1, 200), 20
COSTW_CAP, COSTW_RATE, COSTW_TOKENS = 600, 300.0, (1, 40)
COSTW_KEYS, COSTW_PER_S, COSTW_S = 24, 5.0, 6.0

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
# A client within its concurrency limit: never refused (see the docstring: no timing in it).
CONC_WITHIN = (None, 0.0)
CONC_MEAN = (0.8 * CONC_MAX, None)  # at least 80% of the slots busy once warmed up
CONC_START_PEAK = (None, 3 * CONC_MAX)  # default mode, a jump: N x max_in_flight
CONC_WARM_PEAK = (None, CONC_MAX)  # default mode, warmed up: max_in_flight
CONC_GUARD_PEAK = (None, CONC_MAX * 5 // 4)  # burst_guard, the whole run: 1.25 x

OUTAGE_MEASURE = "admitted during the stall / refill during it"
REDIS_MEASURE = "sum of NODE:consumed - admitted, after the release"
WINDOW_MEASURE = "admitted / refill, from 1 s after the change"
MANY_MEASURE = "not 2xx / requests (wrk)"
QUOTA_MEASURE = "admitted in a whole UTC minute / quota"
QUOTA_PART_MEASURE = "admitted in a partial UTC minute / quota"
SYNC_ERRORS_MEASURE = "tollgate_sync_errors_total, sum over the nodes"
REDIS_CORES_MEASURE = "Redis CPU (sys + user) / wall time, cores"
REDIS_US_MEASURE = "Redis CPU / proxied requests, us"
CONC_MEAN_MEASURE = "upstream in flight, mean from 1 s after the start"
CONC_START_MEASURE = "upstream in flight, most at once in the first 1 s"
CONC_WARM_MEASURE = "upstream in flight, most at once from 1 s after the start"
CONC_PEAK_MEASURE = "upstream in flight, most at once"
CONC_HELD_MEASURE = "sum of NODE:consumed - NODE:credit, after the run"
COST_MEASURE = "tokens reported for the admitted / (capacity + rate x t)"


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

    def __init__(self, env, name, prefix, redis_port, limit, api_port=None, route_limit="acc"):
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
            "upstreams": {"api": {"servers": [f"{HOST}:{api_port or env.api_port}"]}},
            "limits": {"acc": limit},
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "api",
                        "limits": [route_limit]}],
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
    listening and in the registry (`PREFIX:nodes`) when the constructor returns. `api_port`:
    an upstream of the scenario's own (default: the shared one); `route_limit`: the route's
    limits entry (default the limit's name; a response cost is an object)."""

    def __init__(self, env, scenario, n, limit, redis_port=None, api_port=None,
                 route_limit="acc"):
        self.env, self.scenario = env, scenario
        self.prefix = f"acc-{scenario}"
        self.limit = limit
        self.api_port, self.route_limit = api_port, route_limit
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
        return Node(self.env, name, self.prefix, self.redis_port, self.limit, self.api_port,
                    self.route_limit)

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

    def consumed(self, key, field="consumed"):
        h = self.env.redis.cmd("HGETALL", f"{self.prefix}:acc:{key}") or []
        return sum(int(v) for k, v in zip(h[::2], h[1::2]) if k.endswith(f":{field}"))

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

    def get(self, key, path="/x"):
        """The status of one GET `path` (default /x) for `key`; 0 for a connection error."""
        return self.fetch(key, path)[0]

    def fetch(self, key, path="/x"):
        """The status and the response (read, for its headers) of one GET `path` for `key`;
        (0, None) for a connection error."""
        try:
            if self.con is None:
                self.open()
            self.con.request("GET", path, headers={"x-api-key": key})
            r = self.con.getresponse()
            r.read()
            return r.status, r
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, None

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
        # Response costs: the tokens the upstream reported on the 200s, and the 200s without.
        self.tokens = 0
        self.no_tokens = 0
        # Concurrency: (port, sent, answered) of each 200, when the client gives `sent`.
        self.spans = []

    def add(self, status, at, tokens=None, sent=None, port=None):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.ok_at.append(at)
                if sent is not None:
                    self.spans.append((port, sent, at))
                if tokens is None:
                    self.no_tokens += 1
                else:
                    self.tokens += tokens

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

    def refused(self):
        return self.statuses.get(429, 0)


class Hammer(threading.Thread):
    """One keep-alive connection sending for one key until `stop` is set: as fast as it can, or
    `per_second`; from `start_at` (time.monotonic) on when given. `path`: what it requests (a
    string, or a function called for each request); `usage`: a response header whose value
    the tally adds up over the 200s (a response cost); `refused_pause`: after a 429, wait a
    random 0.5 to 1.5 times this many seconds before the next request."""

    def __init__(self, port, key, tally, stop, per_second=None, start_at=None, path="/x",
                 usage=None, refused_pause=None):
        super().__init__(daemon=True)
        self.conn, self.key, self.tally, self.stop = Conn(port), key, tally, stop
        self.per_second, self.start_at = per_second, start_at
        self.path, self.usage, self.refused_pause = path, usage, refused_pause

    def run(self):
        if self.start_at is not None:
            self.stop.wait(max(0.0, self.start_at - time.monotonic()))
        next_at = time.monotonic()
        while not self.stop.is_set():
            path = self.path() if callable(self.path) else self.path
            if self.usage:
                status, r = self.conn.fetch(self.key, path)
                value = r.getheader(self.usage) if status == 200 else None
                tokens = int(value) if value is not None and value.strip().isdigit() else None
                self.tally.add(status, time.monotonic(), tokens)
            else:
                sent = time.monotonic()
                status = self.conn.get(self.key, path)
                self.tally.add(status, time.monotonic(), sent=sent, port=self.conn.port)
            if status == 429 and self.refused_pause:
                self.stop.wait(self.refused_pause * random.uniform(0.5, 1.5))
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


def within_row(name, tally, detail, bound=NOT_ADMITTED):
    missed = tally.sent - tally.admitted
    return Row(name, SHARE_MEASURE, missed / tally.sent if tally.sent else None,
               bound,
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

    # Every window starts with the whole quota (an overshoot is never carried into the next):
    # how far each window's admissions went beyond it.
    beyond = [f"{'a fresh quota' if i == 0 else 'the whole quota'}: "
              f"{len(part) - QUOTA:+d} beyond it" for i, part in enumerate(parts)]

    return [
        ratio_row("quota-balanced-start", QUOTA_PART_MEASURE, len(parts[0]), float(QUOTA),
                  QUOTA_FRESH, f"{b1 - start_wall:.1f} s from the load's start to {utc(b1)} "
                              f"UTC; {spent(parts[0], start_wall)}; {beyond[0]}; {setup}"),
        ratio_row("quota-balanced", QUOTA_MEASURE, len(parts[1]), float(QUOTA), RATIO,
                  f"the minute {utc(b1)}..{utc(b2)} UTC; {spent(parts[1], b1)}; {beyond[1]}; "
                  f"{setup}"),
        ratio_row("quota-balanced-end", QUOTA_PART_MEASURE, len(parts[2]), float(QUOTA),
                  QUOTA_OVER, f"{ended - b2:.1f} s from {utc(b2)} UTC to the load's end; "
                              f"{spent(parts[2], b2)}; {beyond[2]}; {setup}"),
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
# Concurrency limits (max_in_flight) and response costs: an upstream of each scenario's own, so
# that its GET /inflight counts only this scenario's requests.


class UpstreamProc:
    """A `rating-api` of one scenario's own."""

    def __init__(self, env):
        self.proc = env.spawn([env.api, "--listen", f"{HOST}:0"], stdout=subprocess.PIPE,
                              text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if ready else ""
        if "listening on" not in line:
            self.close()
            raise ScenarioError(f"rating-api did not start: {line.strip()!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InFlightSampler(threading.Thread):
    """Polls the upstream's GET /inflight?reset=1 every CONC_SAMPLE_S on one keep-alive
    connection until `stop` is set. Each sample is (the previous poll's moment, this one's, the
    requests in flight at this one, the most at once between the two): the peaks are exact
    whatever the polls' spacing, the mean is over the polls."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.samples, self.error = port, threading.Event(), [], None

    def poll(self, con):
        con.request("GET", "/inflight?reset=1")
        r = con.getresponse()
        v = json.loads(r.read())
        return time.monotonic(), int(v["in_flight"]), int(v["max"])

    def run(self):
        con = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            last = self.poll(con)[0]  # starts the peak afresh
            while not self.stop.wait(CONC_SAMPLE_S):
                at, now, most = self.poll(con)
                self.samples.append((last, at, now, most))
                last = at
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            con.close()

    def finish(self):
        self.stop.set()
        self.join(timeout=10)
        if self.error or self.is_alive():
            raise ScenarioError(f"GET /inflight failed: {self.error or 'no answer'}")

    def mean(self, start, end):
        xs = [n for _, at, n, _ in self.samples if start <= at < end]
        return (sum(xs) / len(xs) if xs else None), len(xs)

    def peak(self, start, end):
        """The most in flight at once in the polls' intervals that overlap [start, end)."""
        xs = [m for since, at, _, m in self.samples if since < end and at > start]
        return max(xs) if xs else None

    def peak_within(self, start, end):
        """The most at once in the intervals wholly inside [start, end]."""
        xs = [m for since, at, _, m in self.samples if since >= start and at <= end]
        return max(xs) if xs else None

    def share_above(self, limit, start, end):
        """The share of the polls in [start, end) that found more than `limit` in flight."""
        xs = [n > limit for _, at, n, _ in self.samples if start <= at < end]
        return sum(xs) / len(xs) if xs else 0.0

    def peak_at(self, start, end):
        """The end of the first interval wholly inside [start, end] with its peak."""
        iv = self.peak_interval(start, end)
        return iv[1] if iv else None

    def peak_interval(self, start, end):
        """(since, at) of the first interval wholly inside [start, end] with its peak."""
        top = self.peak_within(start, end)
        xs = [(since, at) for since, at, _, m in self.samples
              if since >= start and at <= end and m == top]
        return min(xs, key=lambda x: x[1]) if xs else None

    def last_above(self, limit):
        """The end of the last interval whose peak was above `limit` (None: none was)."""
        xs = [at for _, at, _, m in self.samples if m > limit]
        return max(xs) if xs else None

    def spacing_ms(self):
        gaps = sorted(1000 * (at - since) for since, at, _, _ in self.samples)
        if not gaps:
            return "no poll"
        return (f"{len(gaps)} polls, {gaps[len(gaps) // 2]:.0f} ms apart (median), "
                f"{gaps[-1]:.0f} ms at most")


def clients_per_node(tally, ports, interval):
    """The clients' own count of their admitted requests in flight per node (sent, not yet
    answered) at the moment of `interval` (since, at) when their total was highest: how the
    nodes shared a peak the upstream saw in it."""
    if not interval:
        return None
    since, at = interval
    best = None
    for i in range(21):
        t = since + (at - since) * i / 20
        per = [sum(1 for p, a, b in tally.spans if p == port and a <= t < b) for port in ports]
        if best is None or sum(per) > sum(best):
            best = per
    return best


def slots_limit(guard):
    limit = {"max_in_flight": CONC_MAX, "key": ["header:x-api-key"]}
    if guard:
        limit["burst_guard"] = True
    return limit


def run_clients(clients, duration):
    """Starts `clients` (Hammers sharing one stop event, passed as `clients[0].stop`), lets them
    run `duration` s, stops them; returns (start, end) in time.monotonic."""
    start = time.monotonic()
    for c in clients:
        c.start()
    try:
        time.sleep(duration)
    finally:
        if clients:
            clients[0].stop.set()
        join_all(clients)
    return start, time.monotonic()


def run_concurrency_within(env, name, spread):
    """CONC_MAX clients of one key, each keeping one request to /slow?ms=CONC_MS in flight,
    back to back: on one node, or CONC_MAX / 3 per node."""
    key, tally, stop = f"key-{name}", Tally(), threading.Event()
    with UpstreamProc(env) as up, Cluster(env, name, 3, slots_limit(False),
                                          api_port=up.port) as c:
        sampler = InFlightSampler(up.port)
        sampler.start()
        ports = [c.ports[i % 3] if spread else c.ports[0] for i in range(CONC_MAX)]
        clients = [Hammer(p, key, tally, stop, path=CONC_PATH) for p in ports]
        start, end = run_clients(clients, env.duration)
        sampler.finish()
    mean, polls = sampler.mean(start + CONC_WARMUP_S, end)
    how = (f"{CONC_MAX // 3} per node" if spread else "all through one node")
    detail = (f"3 nodes, max_in_flight {CONC_MAX}; {CONC_MAX} clients, {how}, each one request "
              f"to /slow?ms={CONC_MS} after another on its keep-alive connection, "
              f"{end - start:.1f} s; the upstream had {sampler.peak(start, end)} in flight at "
              f"most, {mean if mean is None else round(mean, 2)} on average from "
              f"{CONC_WARMUP_S:g} s on ({polls} polls)")
    return [within_row(name, tally, detail, CONC_WITHIN)]


def run_concurrency_overload(env, name, guard):
    """CONC_CLIENTS clients per node on one key, each keeping a request to /slow?ms=CONC_MS in
    flight when admitted and trying again CONC_REFUSED_PAUSE_S (0.5 to 1.5 x) after a 429; the
    upstream's in-flight count polled throughout."""
    key, tally, stop = f"key-{name}", Tally(), threading.Event()
    with UpstreamProc(env) as up, Cluster(env, name, 3, slots_limit(guard),
                                          api_port=up.port) as c:
        time.sleep(3 * SYNC_MS / 1000.0)  # every node has read the registry since the last joined
        sampler = InFlightSampler(up.port)
        sampler.start()
        time.sleep(5 * CONC_SAMPLE_S)  # a few polls before the jump
        clients = [Hammer(p, key, tally, stop, path=CONC_PATH,
                          refused_pause=CONC_REFUSED_PAUSE_S)
                   for p in c.ports for _ in range(CONC_CLIENTS)]
        start, end = run_clients(clients, env.duration)
        sampler.finish()
        # Every slot given back once the clients are gone: Redis holds as many `credit` as
        # `consumed` (polled: the last releases are pushed by the next sync).
        deadline, held = time.monotonic() + 5.0, None
        while time.monotonic() < deadline:
            held = c.consumed(key) - c.consumed(key, "credit")
            if held == 0:
                break
            time.sleep(0.1)
    warm = start + CONC_WARMUP_S
    mean, polls = sampler.mean(warm, end)
    start_peak, warm_peak = sampler.peak(start, warm), sampler.peak_within(warm, end)
    above, peak_at = sampler.last_above(CONC_MAX), sampler.peak_at(warm, end)
    ports = c.ports
    split = [("in the first second", clients_per_node(tally, ports, sampler.peak_interval(
                 start, warm))),
             ("after it", clients_per_node(tally, ports, sampler.peak_interval(warm, end)))]
    split = "; ".join(f"{when} {', '.join(map(str, per))}" for when, per in split if per)
    admitted_warm = tally.between(warm, end)
    little = admitted_warm * CONC_MS / 1000.0 / (end - warm) if end > warm else 0.0
    mode = '"burst_guard": true' if guard else "default mode"
    if above is None:
        over = f"never above {CONC_MAX}"
    else:
        over = (f"above {CONC_MAX} until {1000 * (above - start):.0f} ms after the start, in "
                f"{100 * sampler.share_above(CONC_MAX, warm, end):.1f}% of the polls from "
                f"{CONC_WARMUP_S:g} s on")
        if peak_at is not None:
            over += f", the peak after it {1000 * (peak_at - start):.0f} ms after the start"
    setup = (f"3 nodes, {mode}, max_in_flight {CONC_MAX}; {CONC_CLIENTS} clients per node on "
             f"one key, /slow?ms={CONC_MS}, a refused client tries again after "
             f"{500 * CONC_REFUSED_PAUSE_S:.0f}-{1500 * CONC_REFUSED_PAUSE_S:.0f} ms; "
             f"{end - start:.1f} s: {tally.sent} requests, {tally.admitted} admitted, "
             f"{tally.refused()} refused{tally.odd()}; upstream /inflight: "
             f"{sampler.spacing_ms()}; most in flight in the first {CONC_WARMUP_S:g} s "
             f"{start_peak}, after it {warm_peak}; {over}; at each peak, the clients' count "
             f"of their admitted requests in flight per node: {split}")
    held_row = Row(f"{name}-held", CONC_HELD_MEASURE, held, (0, 0),
                   f"polled up to 5 s after the clients stopped; {setup}")
    mean_detail = (f"mean of {polls} polls from {CONC_WARMUP_S:g} s on; admitted from then x "
                   f"{CONC_MS} ms / time = {little:.2f} (Little's law, the clients' side); "
                   f"{setup}")
    if guard:
        return [
            Row(name, CONC_MEAN_MEASURE, mean, CONC_MEAN, mean_detail),
            Row(f"{name}-max", CONC_PEAK_MEASURE, sampler.peak(start, end), CONC_GUARD_PEAK,
                setup),
            held_row,
        ]
    return [
        Row(name, CONC_MEAN_MEASURE, mean, CONC_MEAN, mean_detail),
        Row(f"{name}-start", CONC_START_MEASURE, start_peak, CONC_START_PEAK, setup),
        Row(f"{name}-max", CONC_WARM_MEASURE, warm_peak, CONC_WARM_PEAK, setup),
        held_row,
    ]


def cost_route(reserve):
    return {"limit": "acc", "cost": {"response_header": USAGE_HEADER, "reserve": reserve}}


def cost_overshoot(clients, elapsed):
    """The upper bound of the cost-balanced row: RATIO's, plus what settling may charge beyond
    the bucket (each request in flight at the end, one per client at most, settling up to
    COST_TOKENS[1] on a reserve of COST_RESERVE) over the reference."""
    excess = clients * (COST_TOKENS[1] - COST_RESERVE)
    return RATIO[1] + excess / (COST_CAP + COST_RATE * elapsed)


def run_cost_balanced(env):
    name, key, weights = "cost-balanced", "key-cost-balanced", [2, 2, 2]
    limit = {"capacity": COST_CAP, "refill_per_second": COST_RATE, "key": ["header:x-api-key"]}
    tally, stop = Tally(), threading.Event()

    def path():
        return f"/v1/complete?ms={COST_MS}&tokens={random.randint(*COST_TOKENS)}"

    with Cluster(env, name, 3, limit, route_limit=cost_route(COST_RESERVE)) as c:
        clients = [Hammer(port, key, tally, stop, path=path, usage=USAGE_HEADER)
                   for port, w in zip(c.ports, weights) for _ in range(w)]
        start, end = run_clients(clients, env.duration)
        # What the nodes charged, in Redis once their last syncs are in.
        deadline, net = time.monotonic() + 3.0, None
        while time.monotonic() < deadline:
            net = c.consumed(key) - c.consumed(key, "credit")
            if net == tally.tokens:
                break
            time.sleep(0.1)
    elapsed = end - start
    reference = COST_CAP + COST_RATE * elapsed
    bound = (RATIO[0], round(cost_overshoot(sum(weights), elapsed), 3))
    admitted = tally.admitted
    return [Row(name, COST_MEASURE, tally.tokens / reference, bound,
                f"tokens {tally.tokens} in {admitted} admitted requests "
                f"({tally.tokens / admitted if admitted else 0:.1f} each), reference "
                f"{reference:.0f}; 3 nodes, clients 2:2:2 on one key, capacity {COST_CAP}, "
                f"{COST_RATE:g}/s, charged {USAGE_HEADER} of /v1/complete?ms={COST_MS}&tokens=N"
                f", N uniform in {COST_TOKENS[0]}..{COST_TOKENS[1]}, reserve {COST_RESERVE}; "
                f"{tally.sent} requests in {elapsed:.1f} s; Redis: consumed - credit = {net}"
                f"{'' if not tally.no_tokens else f'; {tally.no_tokens} 200s without the header'}"
                f"{tally.odd()}")]


def run_cost_within(env):
    """COSTW_KEYS keys at once, each a client sending COSTW_PER_S requests a second to
    /v1/complete?tokens=N, N uniform in COSTW_TOKENS, so at most COSTW_PER_S x COSTW_TOKENS[1]
    tokens a second, under the refill COSTW_RATE; sticky then spread."""
    name, rows = "cost-within", []
    limit = {"capacity": COSTW_CAP, "refill_per_second": COSTW_RATE, "key": ["header:x-api-key"]}

    def path():
        return f"/v1/complete?ms={COST_MS}&tokens={random.randint(*COSTW_TOKENS)}"

    with Cluster(env, name, 3, limit, route_limit=cost_route(COST_RESERVE)) as c:
        for row, spread in (("cost-within-sticky", False), ("cost-within-spread", True)):
            tally, stop, clients = Tally(), threading.Event(), []
            for k in range(COSTW_KEYS):
                key = f"key-{row}-{k}"
                if spread:
                    # One client per node, each at a third of the key's rate, phases apart.
                    clients += [Hammer(p, key, tally, stop, per_second=COSTW_PER_S / 3.0,
                                       start_at=time.monotonic() + 0.2 + i / COSTW_PER_S,
                                       path=path, usage=USAGE_HEADER)
                                for i, p in enumerate(c.ports)]
                else:
                    clients.append(Hammer(c.ports[k % 3], key, tally, stop,
                                          per_second=COSTW_PER_S, path=path,
                                          usage=USAGE_HEADER))
            start, end = run_clients(clients, COSTW_S)
            how = ("its requests round robin over the nodes (a client per node, each at a "
                   "third of the rate)" if spread else "all its requests through one node")
            rows.append(within_row(
                row, tally,
                f"3 nodes, {COSTW_KEYS} keys at once, each {COSTW_PER_S:g} requests/s for "
                f"{end - start:.1f} s, {how}; capacity {COSTW_CAP}, {COSTW_RATE:g}/s, charged "
                f"{USAGE_HEADER} of /v1/complete?ms={COST_MS}&tokens=N, N uniform in "
                f"{COSTW_TOKENS[0]}..{COSTW_TOKENS[1]} (at most "
                f"{COSTW_PER_S * COSTW_TOKENS[1]:g} tokens/s per key), reserve {COST_RESERVE}; "
                f"tokens {tally.tokens} in {tally.admitted} admitted"))
    return rows


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


def scenarios(duration=10.0):
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
    for name, spread in (("concurrency-within-sticky", False),
                         ("concurrency-within-spread", True)):
        s.append(Scenario(name, [(name, SHARE_MEASURE, CONC_WITHIN, True)],
                          lambda e, name=name, spread=spread:
                          run_concurrency_within(e, name, spread)))
    name = "concurrency-overload"
    s.append(Scenario(name, [(name, CONC_MEAN_MEASURE, CONC_MEAN, False),
                             (f"{name}-start", CONC_START_MEASURE, CONC_START_PEAK, False),
                             (f"{name}-max", CONC_WARM_MEASURE, CONC_WARM_PEAK, False),
                             (f"{name}-held", CONC_HELD_MEASURE, (0, 0), False)],
                      lambda e: run_concurrency_overload(e, "concurrency-overload", False)))
    name = "concurrency-overload-guard"
    s.append(Scenario(name, [(name, CONC_MEAN_MEASURE, CONC_MEAN, False),
                             (f"{name}-max", CONC_PEAK_MEASURE, CONC_GUARD_PEAK, False),
                             (f"{name}-held", CONC_HELD_MEASURE, (0, 0), False)],
                      lambda e: run_concurrency_overload(e, "concurrency-overload-guard", True)))
    cost_bound = (RATIO[0], round(cost_overshoot(6, duration), 3))
    s += [
        Scenario("cost-balanced", [("cost-balanced", COST_MEASURE, cost_bound, False)],
                 run_cost_balanced),
        Scenario("cost-within", share("cost-within-sticky") + share("cost-within-spread"),
                 run_cost_within),
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
    all_ = scenarios(args.duration)
    if args.list:
        for s in all_:
            print(f"{s.name:<27} rows: {', '.join(s.names)}")
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
