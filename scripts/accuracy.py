#!/usr/bin/env python3
"""Multi-node accuracy of shared buckets: 3 tollgate nodes, one real redis-server, one key.

Scenarios (all traffic on loopback, bounded in time):
  balanced  - every node overloaded equally for DURATION s: admitted / (capacity + rate x time)
  skewed    - one node takes 80% of the load: same ratio
  burst     - a full bucket, then a simultaneous burst of 3 x capacity through all nodes at once:
              admitted / capacity

Usage: scripts/accuracy.py TOLLGATE_BIN RATING_API_BIN [DURATION]
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

CAPACITY = 100
RATE = 50.0
SYNC_MS = 100


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def start_node(bin_, tmp, name, redis_port, up_port, limit):
    port, admin = free_port(), free_port()
    cfg = {
        "node_id": name,
        "listeners": [{"address": f"127.0.0.1:{port}"}],
        "admin": {"address": f"127.0.0.1:{admin}"},
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "sync_interval_ms": SYNC_MS, "key_prefix": f"acc-{limit}"},
        "upstreams": {"api": {"servers": [f"127.0.0.1:{up_port}"]}},
        "limits": {limit: {"capacity": CAPACITY, "refill_per_second": RATE, "key": ["header:x-api-key"]}},
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "api", "limits": [limit]}],
        "access_log": False,
    }
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    p = subprocess.Popen([bin_, "run", "-c", path], stdout=log, stderr=log)
    wait_port(port)
    wait_port(admin)
    return p, port


def hammer(port, stop_at, key, counts, idx, pause=0.0):
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    ok = 0
    while time.time() < stop_at:
        try:
            con.request("GET", "/x", headers={"x-api-key": key})
            r = con.getresponse()
            r.read()
            if r.status == 200:
                ok += 1
        except OSError:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        if pause:
            time.sleep(pause)
    counts[idx] = ok


def overload(ports, weights, duration, key):
    counts = [0] * sum(weights)
    threads = []
    start = time.time()
    stop_at = start + duration
    i = 0
    for port, w in zip(ports, weights):
        for _ in range(w):
            threads.append(threading.Thread(target=hammer, args=(port, stop_at, key, counts, i)))
            i += 1
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - start
    return sum(counts), CAPACITY + RATE * elapsed


def burst(ports, key):
    """Each node gets CAPACITY requests at the same moment, on pre-opened connections."""
    per_node = CAPACITY
    results = []
    barrier = threading.Barrier(len(ports) * 4)

    def shoot(port):
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        con.connect()
        barrier.wait()
        ok = 0
        for _ in range(per_node // 4):
            con.request("GET", "/x", headers={"x-api-key": key})
            r = con.getresponse()
            r.read()
            ok += r.status == 200
        results.append(ok)

    threads = [threading.Thread(target=shoot, args=(p,)) for p in ports for _ in range(4)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results), time.time() - start


def main():
    bin_, api = sys.argv[1], sys.argv[2]
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    tmp = tempfile.mkdtemp(prefix="tollgate-accuracy-")
    procs = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(redis_port)
        up = subprocess.Popen([api, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        procs.append(up)
        up_port = int(up.stdout.readline().rsplit(":", 1)[1])
        rows = []
        for scenario in ["balanced", "skewed", "burst"]:
            limit = f"acc-{scenario}"
            nodes = [start_node(bin_, tmp, f"{scenario}-{i}", redis_port, up_port, limit) for i in range(3)]
            procs.extend(p for p, _ in nodes)
            ports = [port for _, port in nodes]
            key = f"key-{scenario}"
            if scenario == "balanced":
                admitted, ideal = overload(ports, [2, 2, 2], duration, key)
                rows.append((scenario, admitted, ideal, "admitted/ideal"))
            elif scenario == "skewed":
                admitted, ideal = overload(ports, [8, 1, 1], duration, key)
                rows.append((scenario, admitted, ideal, "admitted/ideal"))
            else:
                # Let every node register and see the others before the burst.
                time.sleep(3 * SYNC_MS / 1000.0)
                admitted, took = burst(ports, key)
                rows.append((scenario, admitted, float(CAPACITY), "admitted/capacity"))
                rows.append(("burst+refill", admitted, CAPACITY + RATE * took,
                             f"admitted/(capacity + refill during the {took:.2f} s burst)"))
            for p, _ in nodes:
                p.terminate()
        print(f"3 nodes, capacity {CAPACITY}, {RATE}/s, sync {SYNC_MS} ms, overload {duration:.0f} s")
        print(f"{'scenario':<10} {'admitted':>9} {'reference':>10} {'ratio':>7}  measure")
        for name, admitted, ref, what in rows:
            print(f"{name:<10} {admitted:>9} {ref:>10.0f} {admitted / ref:>7.3f}  {what}")
    finally:
        for p in procs:
            try:
                p.kill()
            except OSError:
                pass


if __name__ == "__main__":
    main()
