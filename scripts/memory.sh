#!/usr/bin/env bash
# In-process memory per active bucket (`docs/performance.md`, target: under 256 bytes) and eviction,
# for a standalone limit and a shared one (examples/memory.rs: standalone, shared-quiet and
# shared-synced, each in a process of its own).
# Usage: scripts/memory.sh [--short] [BUCKETS]
#   default   release build, 1,000,000 buckets per mode: the figures of docs/performance.md.
#   --short   the test run's form (scripts/test.sh): debug build, 200,000 buckets per mode, about
#             10 s. A debug build measures the same bytes per bucket as a release one (same types,
#             same allocator) and its dependencies are those `cargo test` compiles in the same run;
#             a release build compiles the whole dependency tree a second time (12 minutes on the
#             2-core development machine).
# MEMORY_KEY_PREFIX=... prepends to every key.
# Exit status: the example's: 0 when every mode is under 256 bytes per bucket and evicted; 2 when
# only shared-mode buckets are at 256 bytes or more; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure cmake:cmake cc:build-essential

profile=release
buckets=1000000
if [ "${1:-}" = "--short" ]; then
  profile=debug
  buckets=200000
  shift
fi
buckets="${1:-$buckets}"

if [ "$profile" = release ]; then
  cargo build --release --example memory
else
  cargo build --example memory
fi
exec "target/$profile/examples/memory" "$buckets"
