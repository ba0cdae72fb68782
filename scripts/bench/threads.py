#!/usr/bin/env python3
"""Where a process's threads spend a run, for scripts/bench.sh (BENCH_H2_PROFILE=1).

  threads.py snap PID FILE
      Writes to FILE (JSON) the monotonic time, /proc/stat's per-CPU counters and, per thread of
      PID: its name, utime and stime (ticks), /proc/PID/task/TID/schedstat (ns on the CPU, ns
      runnable but waiting for the CPU, timeslices) and its voluntary and involuntary context
      switches.

  threads.py diff FILE0 FILE1 RPS [CPUS]
      Between two snapshots taken while a load ran at RPS requests/s (requests = RPS x the wall
      time between them), per thread that ran at least 1% of the wall time: the share of the
      wall time it spent on a CPU, runnable waiting for one (the run queue: another task had
      the CPU), and neither (asleep: blocked in a syscall, for tollgate epoll_wait, or on a
      lock), its user and system CPU per request, and its context switches per request
      (voluntary: it blocked; involuntary: it was preempted). Then, for each CPU in CPUS (comma-separated), its
      /proc/stat split (idle, user, system, irq, softirq, steal: steal is time the hypervisor
      gave to another guest), and the share of one CPU this process's threads used. CPUS as
      taskset's lists ("1", "0-1"); empty or "all": every CPU.

  threads.py syscalls FILE REQUESTS LABEL
      From `perf stat -x, -o FILE -e syscalls:sys_enter_NAME,...,raw_syscalls:sys_enter` over a
      run that served REQUESTS requests: all syscalls per request (raw_syscalls), then each
      counted one per request, most frequent first. perf stat counts in the kernel and loses
      nothing (perf trace drops events under this load).

  threads.py cpus FILE
      Writes to FILE (JSON) the monotonic time and /proc/stat's per-CPU counters.

  threads.py kernel PERFSTAT REQUESTS LABEL USER SYS CPUS0 CPUS1 LOADCPUS
      One row of the kernel view of scripts/bench.sh (BENCH_KERNEL=1): a proxy's CPU per request
      (USER and SYS: its ticks over a run that served REQUESTS requests), its syscalls per request
      and getpeername per request, and its wake-ups of other tasks per request (sched_waking
      events it raised: a sleeping peer woken by what it sent), from `perf stat -x, -o PERFSTAT
      -e raw_syscalls:sys_enter,syscalls:sys_enter_getpeername,sched:sched_waking`; then how
      busy the load's CPUs (LOADCPUS, as taskset's lists) were between the snapshots CPUS0 and
      CPUS1 (`threads.py cpus`): the busier the load generator and the upstream, the fewer of
      them are asleep when the proxy sends to them.
"""

import json
import os
import sys
import time

CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_counters():
    cpus = {}
    for line in open("/proc/stat", encoding="utf-8"):
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            v = [int(x) for x in f[1:9]]
            # user nice system idle iowait irq softirq steal
            cpus[f[0][3:]] = dict(zip(CPU_FIELDS, v))
    return cpus


def snap(pid, path):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = open(f"{base}/comm", encoding="utf-8").read().strip()
            stat = open(f"{base}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()
            run, wait, slices = (int(x) for x in open(f"{base}/schedstat").read().split())
            status = {}
            for line in open(f"{base}/status", encoding="utf-8"):
                k, _, v = line.partition(":")
                status[k] = v.strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        threads[tid] = dict(
            comm=comm,
            utime=int(stat[11]),
            stime=int(stat[12]),
            run=run,
            wait=wait,
            slices=slices,
            vcsw=int(status["voluntary_ctxt_switches"]),
            ivcsw=int(status["nonvoluntary_ctxt_switches"]),
        )
    json.dump(dict(t=time.monotonic(), cpus=cpu_counters(), threads=threads), open(path, "w"))


def expand(cpus, known):
    """ "0-1,3" -> ["0", "1", "3"]; "" or "all" -> every CPU in `known`."""
    if cpus in ("", "all"):
        return sorted(known, key=int)
    out = []
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out += [str(c) for c in range(int(lo), int(hi or lo) + 1) if str(c) not in out]
    return out


def perf_counts(path):
    """`perf stat -x,` output: event name (its last part) -> count."""
    counts = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2].split(":")[-1]] = int(f[0])
    return counts


def syscalls(path, requests, label):
    """A `perf stat -x, -e syscalls:sys_enter_...,raw_syscalls:sys_enter` output: per request."""
    reqs = max(int(requests), 1)
    counts = {k.removeprefix("sys_enter_"): v for k, v in perf_counts(path).items()}
    total = counts.pop("sys_enter", None)
    each = ", ".join(
        f"{k} {v / reqs:.3f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v
    )
    shown = f"{total / reqs:.2f}" if total is not None else "?"
    print(f"   {label}: {reqs} requests, {shown} syscalls per request: {each}")


def diff(path0, path1, rps, cpus=""):
    a, b = json.load(open(path0)), json.load(open(path1))
    wall = b["t"] - a["t"]
    reqs = max(int(float(rps) * wall), 1)
    hz = os.sysconf("SC_CLK_TCK")
    print(f"   over {wall:.2f} s wall, {reqs} requests ({float(rps):.0f} req/s):")
    print(
        f"   {'thread':<18}{'on CPU':>8}{'run queue':>11}{'asleep':>8}{'user us/req':>13}"
        f"{'sys us/req':>12}{'vol. csw/req':>14}{'invol. csw/req':>16}"
    )
    used = 0.0
    for tid, y in sorted(b["threads"].items(), key=lambda kv: -kv[1]["run"]):
        x = a["threads"].get(tid)
        if not x:
            continue
        run = (y["run"] - x["run"]) / 1e9
        wait = (y["wait"] - x["wait"]) / 1e9
        used += run
        if run < 0.01 * wall:
            continue
        print(
            f"   {y['comm'] + ' ' + tid:<18}{run / wall * 100:>7.1f}%{wait / wall * 100:>10.1f}%"
            f"{max(0.0, 100 - (run + wait) / wall * 100):>7.1f}%"
            f"{(y['utime'] - x['utime']) / hz * 1e6 / reqs:>13.1f}"
            f"{(y['stime'] - x['stime']) / hz * 1e6 / reqs:>12.1f}"
            f"{(y['vcsw'] - x['vcsw']) / reqs:>14.4f}{(y['ivcsw'] - x['ivcsw']) / reqs:>16.4f}"
        )
    for c in expand(cpus, a["cpus"]):
        if c not in a["cpus"] or c not in b["cpus"]:
            continue
        d = {k: b["cpus"][c][k] - a["cpus"][c][k] for k in CPU_FIELDS}
        total = sum(d.values())
        if total > 0:
            parts = ", ".join(
                f"{k} {d[k] * 100 / total:.1f}%" for k in CPU_FIELDS if k != "idle" and d[k]
            )
            print(f"   CPU {c}: idle {d['idle'] * 100 / total:.1f}%; {parts}")
    print(f"   this process's threads together: {used / wall * 100:.1f}% of one CPU")


def cpus(path):
    json.dump(dict(t=time.monotonic(), cpus=cpu_counters()), open(path, "w"))


def kernel(path, requests, label, user, system, cpus0, cpus1, loadcpus):
    reqs = max(int(requests), 1)
    hz = os.sysconf("SC_CLK_TCK")
    c = perf_counts(path)
    a, b = json.load(open(cpus0))["cpus"], json.load(open(cpus1))["cpus"]
    busy = []
    for cpu in expand(loadcpus, a):
        if cpu in a and cpu in b:
            d = {k: b[cpu][k] - a[cpu][k] for k in CPU_FIELDS}
            total = sum(d.values())
            if total > 0:
                busy.append(f"{(total - d['idle']) * 100 / total:.0f}%")

    def per(name):
        return f"{c[name] / reqs:.3f}" if name in c else "?"

    print(
        f"   {label:<14}{int(user) / hz * 1e6 / reqs:>9.2f}{int(system) / hz * 1e6 / reqs:>9.2f}"
        f"{per('sys_enter'):>11}{per('sys_enter_getpeername'):>13}{per('sched_waking'):>10}"
        f"   {' '.join(busy) or '?'}"
    )


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "diff":
        diff(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "syscalls":
        syscalls(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "cpus":
        cpus(sys.argv[2])
    elif len(sys.argv) == 10 and sys.argv[1] == "kernel":
        kernel(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
