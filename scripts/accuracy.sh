#!/usr/bin/env bash
# Multi-node accuracy: 3 nodes against a real Redis; prints admitted/ideal for balanced and
# skewed overload and admitted/capacity for a simultaneous burst onto a full bucket.
# Usage: scripts/accuracy.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: run scripts/test.sh first (it installs it)"; exit 1; }
cargo build --release --bins
exec python3 scripts/accuracy.py target/release/tollgate target/release/rating-api "${1:-10}"
