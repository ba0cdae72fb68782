#!/usr/bin/env bash
# In-process memory per active bucket (`docs/performance.md`, targets: under 256 bytes) and eviction: builds
# examples/memory.rs in release mode and runs it (1,000,000 buckets by default).
# Usage: scripts/memory.sh [BUCKETS]      MEMORY_KEY_PREFIX=... prepends to every key.
# Exit status: the example's (non-zero when bytes/bucket >= 256 or eviction leaves buckets).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure cmake:cmake cc:build-essential

cargo build --release --example memory
exec target/release/examples/memory "${1:-1000000}"
