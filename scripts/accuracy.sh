#!/usr/bin/env bash
# Multi-node accuracy, as a check: real nodes against one real Redis (and examples/tcp_delay to
# put Redis a round trip away or stall it); prints one row per scenario (figure, bound,
# PASS/FAIL) and a Markdown table, and exits 1 when any row misses its bound. The rows and
# their bounds are listed at the top of scripts/accuracy.py.
# Usage: scripts/accuracy.sh [SECONDS] [--only NAME,...] [--keys N] [--many-keys N]
#                            [--wrk-connections N] [--pin-wrk CPUS] [--list]
#   SECONDS: length of each overload row and of the many-keys load (default 10); --only:
#   scenarios or rows, shell patterns allowed (--only 'rtt80-*,outage'), so that one row can be
#   iterated on alone. The many-keys rows drive the nodes with wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: run scripts/test.sh first (it installs it)"; exit 1; }
. scripts/lib.sh
ensure wrk:wrk taskset:util-linux
cargo build --release --bins --example tcp_delay
exec python3 scripts/accuracy.py target/release/tollgate target/release/rating-api \
  --tcp-delay target/release/examples/tcp_delay "$@"
