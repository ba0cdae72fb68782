#!/usr/bin/env python3
"""Where a callgrind profile's instructions go, by tollgate source line (docs/performance.md).

  callgrind_lines.py OUT BINARY N [TOP] [--calls]

OUT is a callgrind output recorded with `--dump-instr=yes` of BINARY (a release build with
debug info, as tollgate's release profile is); N divides every count (the requests or
decisions the run made). Each instruction's cost goes to the innermost line of tollgate's
`src/` in its inlining chain (`addr2line -i`): callgrind's own per-line view puts code inlined
from a library (smallvec, hashbrown, core) under that library's line, which says nothing about
which line of tollgate's asked for it. Instructions of other objects (libc's memcpy, memcmp)
are listed by function. `--calls` adds each call site's inclusive cost by callee.

For example, the decision alone with plans, 20,000 times:

  cargo build --release --example hot_path
  HOT_PATH_PLANS=1 valgrind --tool=callgrind --dump-instr=yes \\
      --toggle-collect='tollgate::request::decision::decide' --callgrind-out-file=/tmp/hp \\
      target/release/examples/hot_path 20000
  scripts/bench/callgrind_lines.py /tmp/hp target/release/examples/hot_path 20000 40
"""
import collections
import os
import re
import subprocess
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")
SRC = os.path.realpath(SRC) + "/"
POS = re.compile(r"^(0x[0-9a-f]+|\+\d+|-\d+|\*)\s+(0x[0-9a-f]+|\+\d+|-\d+|\*|\d+)\s*(\d*)")
NAMED = re.compile(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?")


def parse(path, binary):
    """Self costs by address of `binary`, by function elsewhere, and call sites' inclusive
    costs by (address, callee)."""
    own, other, calls = collections.Counter(), collections.Counter(), collections.Counter()
    names = {"ob": {}, "fn": {}}
    obj = fn = callee = None
    last, call_line = 0, False
    base = os.path.basename(binary)
    with open(path) as f:
        for line in f:
            m = NAMED.match(line)
            if m:
                called, kind, num, name = m.groups()
                if name:
                    names[kind][num] = name.strip()
                if called and kind == "fn":
                    callee = names["fn"].get(num)
                elif not called:
                    if kind == "ob":
                        obj = names["ob"].get(num)
                    else:
                        fn = names["fn"].get(num)
                continue
            if line.startswith("calls="):
                call_line = True
                continue
            m = POS.match(line)
            if not m:
                continue
            p = m.group(1)
            addr = int(p, 16) if p.startswith("0x") else last + int(p) if p[0] in "+-" else last
            last = addr
            cost = int(m.group(3) or 0)
            ours = obj is not None and os.path.basename(obj) == base
            if call_line:
                call_line = False
                if ours:
                    calls[(addr, callee)] += cost
            elif ours:
                own[addr] += cost
            else:
                other[f"({os.path.basename(obj or '?')}) {fn}"] += cost
    return own, other, calls


def chains(binary, addrs):
    """The inlining chain of each address: [(function, file:line)], innermost first."""
    out = subprocess.run(["addr2line", "-a", "-i", "-f", "-C", "-e", binary]
                         + [hex(a) for a in addrs], capture_output=True, text=True, check=True)
    result, cur, frames = {}, None, []
    for line in out.stdout.splitlines():
        if re.fullmatch(r"0x[0-9a-f]+", line):
            if cur is not None:
                result[cur] = list(zip(frames[0::2], frames[1::2]))
            cur, frames = int(line, 16), []
        else:
            frames.append(line)
    if cur is not None:
        result[cur] = list(zip(frames[0::2], frames[1::2]))
    return result


def line_of(chain):
    """The innermost tollgate line of a chain, else the outermost frame's file and the
    innermost function."""
    for _, loc in chain:
        if loc.startswith(SRC):
            return loc[len(SRC):].split(" ")[0]
    if not chain:
        return "?"
    return f"(lib) {os.path.basename(chain[-1][1].split(' ')[0])} {chain[0][0][:60]}"


def main():
    args = [a for a in sys.argv[1:] if a != "--calls"]
    if len(args) < 3:
        sys.exit(__doc__)
    out, binary, n = args[0], args[1], float(args[2])
    top = int(args[3]) if len(args) > 3 else 60
    own, other, calls = parse(out, binary)
    where = chains(binary, sorted(set(own) | {a for a, _ in calls}))
    by_line = collections.Counter()
    for addr, cost in own.items():
        by_line[line_of(where.get(addr, []))] += cost
    by_line.update(other)
    print(f"total per unit: {sum(by_line.values()) / n:,.1f}")
    for name, cost in by_line.most_common(top):
        print(f"{cost / n:9.1f}  {name}")
    if "--calls" in sys.argv:
        sites = collections.Counter()
        for (addr, callee), cost in calls.items():
            sites[f"{line_of(where.get(addr, []))} -> {str(callee)[:70]}"] += cost
        print("call sites, inclusive:")
        for name, cost in sites.most_common(top):
            print(f"{cost / n:9.1f}  {name}")


if __name__ == "__main__":
    main()
