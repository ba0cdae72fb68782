#!/usr/bin/env python3
"""Helpers for scripts/bench.sh.

  summarize.py wrk FILE
      Parses one `wrk --latency` output; prints, tab-separated:
      requests  seconds  rps  p50_ms  p99_ms  bad
      where `bad` = non-2xx/3xx responses + socket errors (connect, read, write, timeout).

  summarize.py table TSV
      TSV lines: proxy round cpu_ticks requests rps p50_ms p99_ms bad clk_tck
      [user_ticks system_ticks]
      Prints per proxy the medians across rounds (CPU microseconds per request, and its user
      and system parts, requests/s, p50, p99), then the ratios of the median CPU per request
      (tollgate_on against nginx, haproxy, bare_pingora and tollgate_off; bare_pingora against
      nginx; with the same ratio per round, to show the spread) and of the median p99
      (tollgate_on / nginx).

  summarize.py latency TSV
      TSV lines: target round requests rps p50_ms p99_ms bad, from `wrk -t1 -c1` runs against
      the upstream directly (target `direct`) and through each proxy. Prints the median p50 of
      each, the latency each proxy adds (median p50 through it - median p50 direct) and the
      ratio tollgate_on-added / nginx-added.

  summarize.py h2load FILE [LOG]
      Parses one `h2load` output (and, when given, its --log-file: one line per request, the
      last column the microseconds from the request's start to the end of its response); prints,
      tab-separated:
      requests  seconds  rps  p50_ms  p99_ms  bad  mean_ms  protocol
      where requests = requests done, bad = requests failed (h2load counts in it the responses
      with a status >= 400 and the errored and timed-out ones), mean_ms = h2load's mean "time
      for request", p50_ms and p99_ms come from LOG (nan without it) and protocol is the ALPN
      protocol h2load reports ("h2" expected).

  summarize.py h2table TSV
      As `table`, for the HTTP/2-over-TLS rows: TSV lines as `table`'s with user and system
      ticks, then the mean request time (ms) h2load reports, the wall seconds the CPU ticks
      were counted over, and the connections the upstream accepted meanwhile. Prints the
      medians (CPU us/request, user, system, req/s, mean, p50, p99; failed is the sum over the
      rounds), the share of one CPU the proxy used ("core %": CPU time / wall time) and the
      upstream connections it opened per 1,000 requests ("up conn/1k": 0 when it reused its
      keep-alive connections), then the ratios of the median CPU per request tollgate_on /
      nginx, / haproxy and / tollgate_off, with each round's ratio.

  summarize.py targets TABLE_TSV LATENCY_TSV
      Checks the targets (see TARGETS) and prints each with PASS or FAIL; exits 1 when one is
      missed or cannot be computed, 0 otherwise.
"""

import re
import statistics
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}

ORDER = ["tollgate_on", "tollgate_off", "bare_pingora", "haproxy", "nginx"]
LATENCY_ORDER = ["direct", "nginx", "haproxy", "bare_pingora", "tollgate_on"]

# (label, what is compared, maximum)
TARGETS = [
    ("CPU us/req  tollgate_on / nginx", "cpu_on_nginx", 1.5),
    ("p99         tollgate_on / nginx", "p99_on_nginx", 1.5),
    ("added p50, one client, tollgate_on / nginx", "added_on_nginx", 1.5),
    ("CPU us/req  tollgate_on / tollgate_off", "cpu_on_off", 1.03),
]


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
    print(f"{requests}\t{seconds:.3f}\t{rps:.1f}\t{p50:.4f}\t{p99:.4f}\t{bad}")


def percentile(sorted_values, q):
    """The nearest-rank q-quantile (0 < q <= 1) of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def parse_h2load(path, log=None):
    out = open(path, encoding="utf-8", errors="replace").read()
    m = re.search(r"^finished in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+) req/s", out, re.M)
    r = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed,"
        r" (\d+) errored, (\d+) timeout",
        out,
        re.M,
    )
    t = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if not (m and r):
        raise SystemExit(f"cannot parse h2load output {path}:\n{out}")
    seconds = to_ms(m.group(1) + m.group(2)) / 1000.0
    rps = float(m.group(3))
    done, failed = int(r.group(3)), int(r.group(5))
    mean = to_ms(t.group(3)) if t and done else float("nan")
    proto = re.search(r"^Application protocol: (\S+)", out, re.M)
    p50 = p99 = float("nan")
    if log:
        times = sorted(int(line.split()[-1]) for line in open(log, encoding="utf-8") if line.strip())
        p50, p99 = percentile(times, 0.50) / 1000.0, percentile(times, 0.99) / 1000.0
    print(
        f"{done}\t{seconds:.3f}\t{rps:.1f}\t{p50:.4f}\t{p99:.4f}\t{failed}\t{mean:.4f}"
        f"\t{proto.group(1) if proto else 'none'}"
    )


def read_table(path):
    """Rows per proxy, one dict per round."""
    rows = {}
    for line in open(path, encoding="utf-8"):
        f = line.split()
        if len(f) not in (9, 11, 14):
            continue
        proxy, rnd, ticks, reqs, rps, p50, p99, bad, hz = f[:9]
        per_req = lambda t: int(t) / int(hz) * 1e6 / max(int(reqs), 1)  # noqa: E731
        user_us, sys_us = (per_req(f[9]), per_req(f[10])) if len(f) >= 11 else (None, None)
        rows.setdefault(proxy, []).append(
            dict(
                round=int(rnd),
                cpu=per_req(ticks),
                user=user_us,
                sys=sys_us,
                rps=float(rps),
                p50=float(p50),
                p99=float(p99),
                bad=int(bad),
                reqs=int(reqs),
                mean=float(f[11]) if len(f) == 14 else None,
                core=int(ticks) / int(hz) / float(f[12]) * 100 if len(f) == 14 else None,
                upconns=int(f[13]) * 1000 / max(int(reqs), 1) if len(f) == 14 else None,
            )
        )
    return rows


def medians(rows):
    med = {}
    for p, rs in rows.items():
        med[p] = {k: statistics.median(r[k] for r in rs) for k in ("cpu", "rps", "p50", "p99")}
        if all(r["user"] is not None for r in rs):
            med[p]["user"] = statistics.median(r["user"] for r in rs)
            med[p]["sys"] = statistics.median(r["sys"] for r in rs)
        for k in ("mean", "core", "upconns"):
            if all(r[k] is not None for r in rs):
                med[p][k] = statistics.median(r[k] for r in rs)
    return med


def table(path, h2=False):
    rows = read_table(path)
    med = medians(rows)
    mean_head = f"{'mean ms':>9}" if h2 else ""
    h2_head = f"{'core %':>8}{'up conn/1k':>12}" if h2 else ""
    print(
        f"{'proxy':<14}{'rounds':>7}{'CPU us/req':>12}{'user':>8}{'system':>8}{'req/s':>9}"
        f"{mean_head}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx' if not h2 else 'failed':>9}{h2_head}"
        f"   CPU us/req per round"
    )
    for p in ORDER + sorted(set(rows) - set(ORDER)):
        rs = rows.get(p, [])
        if not rs:
            continue
        m = med[p]
        per_round = " ".join(f"{r['cpu']:.1f}" for r in sorted(rs, key=lambda r: r["round"]))
        bad = sum(r["bad"] for r in rs)
        user = f"{m['user']:>8.2f}{m['sys']:>8.2f}" if "user" in m else f"{'-':>8}{'-':>8}"
        mean = (f"{m['mean']:>9.3f}" if "mean" in m else f"{'-':>9}") if h2 else ""
        extra = ""
        if h2:
            extra = f"{m['core']:>8.1f}" if "core" in m else f"{'-':>8}"
            extra += f"{m['upconns']:>12.1f}" if "upconns" in m else f"{'-':>12}"
        print(
            f"{p:<14}{len(rs):>7}{m['cpu']:>12.2f}{user}{m['rps']:>9.0f}"
            f"{mean}{m['p50']:>9.3f}{m['p99']:>9.3f}{bad:>9}{extra}   {per_round}"
        )
    print()

    def ratio(a, b, key="cpu", label="CPU us/req"):
        if a not in med or b not in med or med[b][key] <= 0:
            return
        r = med[a][key] / med[b][key]
        by_round = {x["round"]: x[key] for x in rows[b]}
        per = [
            x[key] / by_round[x["round"]]
            for x in sorted(rows[a], key=lambda x: x["round"])
            if by_round.get(x["round"], 0) > 0
        ]
        spread = " ".join(f"{x:.3f}" for x in per)
        name = f"{a}/{b}"
        print(f"{label:<11} {name:<26} = {r:6.3f}  ({(r - 1) * 100:+6.1f}%)   per round: {spread}")

    if h2:
        ratio("tollgate_on", "nginx")
        ratio("tollgate_on", "haproxy")
        ratio("tollgate_on", "tollgate_off")
        return
    ratio("tollgate_on", "nginx")
    ratio("tollgate_on", "haproxy")
    ratio("tollgate_on", "bare_pingora")
    ratio("bare_pingora", "nginx")
    ratio("tollgate_on", "tollgate_off")
    ratio("tollgate_off", "nginx")
    ratio("tollgate_on", "nginx", key="p99", label="p99")


def read_latency(path):
    rows = {}
    for line in open(path, encoding="utf-8"):
        f = line.split()
        if len(f) != 7:
            continue
        target, rnd, reqs, rps, p50, p99, bad = f
        rows.setdefault(target, []).append(
            dict(
                round=int(rnd),
                reqs=int(reqs),
                rps=float(rps),
                p50=float(p50),
                p99=float(p99),
                bad=int(bad),
            )
        )
    return rows


def added(rows):
    """Median p50 per target, and median p50 through each proxy minus the direct one (ms)."""
    p50 = {t: statistics.median(r["p50"] for r in rs) for t, rs in rows.items()}
    plus = {t: v - p50["direct"] for t, v in p50.items() if t != "direct" and "direct" in p50}
    return p50, plus


def latency(path):
    rows = read_latency(path)
    p50, plus = added(rows)
    print(
        f"{'target':<14}{'rounds':>7}{'req/s':>9}{'p50 us':>9}{'p99 us':>9}{'added p50 us':>14}"
        f"{'non-2xx':>9}   p50 us per round"
    )
    for t in LATENCY_ORDER + sorted(set(rows) - set(LATENCY_ORDER)):
        rs = rows.get(t, [])
        if not rs:
            continue
        rps = statistics.median(r["rps"] for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        add = f"{plus[t] * 1000:>14.1f}" if t in plus else f"{'-':>14}"
        per_round = " ".join(f"{r['p50'] * 1000:.0f}" for r in sorted(rs, key=lambda r: r["round"]))
        bad = sum(r["bad"] for r in rs)
        print(
            f"{t:<14}{len(rs):>7}{rps:>9.0f}{p50[t] * 1000:>9.1f}{p99 * 1000:>9.1f}{add}{bad:>9}"
            f"   {per_round}"
        )
    print()
    for a in ("tollgate_on", "bare_pingora", "haproxy"):
        if a in plus and "nginx" in plus and plus["nginx"] > 0:
            r = plus[a] / plus["nginx"]
            print(
                f"added p50   {a + '/nginx':<26} = {r:6.3f}"
                f"  ({plus[a] * 1000:.1f} us / {plus['nginx'] * 1000:.1f} us)"
            )


def targets(table_path, latency_path):
    med = medians(read_table(table_path))
    _, plus = added(read_latency(latency_path))

    def ratio(a, b, key):
        if a in med and b in med and med[b][key] > 0:
            return med[a][key] / med[b][key]
        return None

    values = {
        "cpu_on_nginx": ratio("tollgate_on", "nginx", "cpu"),
        "p99_on_nginx": ratio("tollgate_on", "nginx", "p99"),
        "cpu_on_off": ratio("tollgate_on", "tollgate_off", "cpu"),
        "added_on_nginx": (
            plus["tollgate_on"] / plus["nginx"]
            if "tollgate_on" in plus and plus.get("nginx", 0) > 0
            else None
        ),
    }
    missed = 0
    for label, key, limit in TARGETS:
        v = values[key]
        ok = v is not None and v <= limit
        missed += not ok
        shown = f"{v:.3f}" if v is not None else "n/a"
        why = "" if v is not None else "  (not measured, or nginx added no latency)"
        print(f"{'PASS' if ok else 'FAIL'}  {label:<44} {shown:>7}  (target <= {limit}){why}")
    print(f"{len(TARGETS) - missed} of {len(TARGETS)} targets met")
    return 1 if missed else 0


def h2table(path):
    table(path, h2=True)


def main():
    cmds = {
        "wrk": (parse_wrk, 1),
        "h2load": (parse_h2load, (1, 2)),
        "table": (table, 1),
        "h2table": (h2table, 1),
        "latency": (latency, 1),
        "targets": (targets, 2),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        raise SystemExit(__doc__)
    nargs = cmds[sys.argv[1]][1]
    if len(sys.argv) - 2 not in (nargs if isinstance(nargs, tuple) else (nargs,)):
        raise SystemExit(__doc__)
    fn, _ = cmds[sys.argv[1]]
    sys.exit(fn(*sys.argv[2:]) or 0)


if __name__ == "__main__":
    main()
