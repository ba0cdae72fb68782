#!/usr/bin/env python3
"""Helpers for scripts/bench.sh.

  summarize.py wrk FILE
      Parses one `wrk --latency` output; prints, tab-separated:
      requests  seconds  rps  p50_ms  p99_ms  bad
      where `bad` = non-2xx/3xx responses + socket errors (connect, read, write, timeout).

  summarize.py table TSV
      TSV lines: proxy round cpu_ticks requests rps p50_ms p99_ms bad clk_tck
      [user_ticks system_ticks]
      Prints per proxy the medians across rounds (CPU microseconds per request, requests/s,
      p50, p99) and the ratios tollgate_on/tollgate_off and tollgate_on/nginx of the median
      CPU per request (and the same ratio per round, to show the spread).
"""

import re
import statistics
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse_wrk(path):
    out = open(path, encoding="utf-8", errors="replace").read()
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", out, re.M)
    if not m:
        raise SystemExit(f"cannot parse wrk output {path}:\n{out}")
    requests = int(m.group(1))
    seconds = to_ms(m.group(2) + m.group(3)) / 1000.0
    rps = float(re.search(r"^Requests/sec:\s*([0-9.]+)", out, re.M).group(1))
    p50 = to_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    bad = 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if m:
        bad += int(m.group(1))
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if m:
        bad += sum(int(x) for x in m.groups())
    print(f"{requests}\t{seconds:.3f}\t{rps:.1f}\t{p50:.3f}\t{p99:.3f}\t{bad}")


ORDER = ["tollgate_on", "tollgate_off", "nginx"]


def table(path):
    rows = {}
    for line in open(path, encoding="utf-8"):
        f = line.split()
        if len(f) not in (9, 11):
            continue
        proxy, rnd, ticks, reqs, rps, p50, p99, bad, hz = f[:9]
        per_req = lambda t: int(t) / int(hz) * 1e6 / max(int(reqs), 1)  # noqa: E731
        cpu_us = per_req(ticks)
        user_us, sys_us = (per_req(f[9]), per_req(f[10])) if len(f) == 11 else (None, None)
        rows.setdefault(proxy, []).append(
            dict(
                round=int(rnd),
                cpu=cpu_us,
                user=user_us,
                sys=sys_us,
                rps=float(rps),
                p50=float(p50),
                p99=float(p99),
                bad=int(bad),
                reqs=int(reqs),
            )
        )
    med = {}
    print(
        f"{'proxy':<14}{'rounds':>7}{'CPU us/req':>12}{'req/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}   CPU us/req per round"
    )
    for p in ORDER:
        rs = rows.get(p, [])
        if not rs:
            continue
        med[p] = {k: statistics.median(r[k] for r in rs) for k in ("cpu", "rps", "p50", "p99")}
        per_round = " ".join(f"{r['cpu']:.1f}" for r in sorted(rs, key=lambda r: r["round"]))
        bad = sum(r["bad"] for r in rs)
        print(
            f"{p:<14}{len(rs):>7}{med[p]['cpu']:>12.2f}{med[p]['rps']:>10.0f}"
            f"{med[p]['p50']:>9.3f}{med[p]['p99']:>9.3f}{bad:>9}   {per_round}"
        )
    if all(r["user"] is not None for rs in rows.values() for r in rs):
        print()
        print(f"{'proxy':<14}{'user us/req':>12}{'system us/req':>15}{'system share':>14}")
        for p in ORDER:
            rs = rows.get(p, [])
            if not rs:
                continue
            u = statistics.median(r["user"] for r in rs)
            k = statistics.median(r["sys"] for r in rs)
            print(f"{p:<14}{u:>12.2f}{k:>15.2f}{k / max(u + k, 1e-9):>14.2f}")
    print()

    def ratio(a, b):
        if a not in med or b not in med:
            return
        r = med[a]["cpu"] / med[b]["cpu"]
        by_round = {r_["round"]: r_["cpu"] for r_ in rows[b]}
        per = [
            x["cpu"] / by_round[x["round"]]
            for x in sorted(rows[a], key=lambda x: x["round"])
            if x["round"] in by_round
        ]
        spread = " ".join(f"{x:.3f}" for x in per)
        print(
            f"CPU us/req  {a}/{b} = {r:.3f}  ({(r - 1) * 100:+.1f}%)"
            f"   per round: {spread}"
        )

    ratio("tollgate_on", "tollgate_off")
    ratio("tollgate_on", "nginx")
    ratio("tollgate_off", "nginx")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("wrk", "table"):
        raise SystemExit(__doc__)
    {"wrk": parse_wrk, "table": table}[sys.argv[1]](sys.argv[2])


if __name__ == "__main__":
    main()
