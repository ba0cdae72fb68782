#!/usr/bin/env bash
# In-process memory per active bucket (SPEC section 8: under 256 bytes) and eviction: builds
# examples/memory.rs in release mode and runs it (1,000,000 buckets by default).
# Usage: scripts/memory.sh [BUCKETS]      MEMORY_KEY_PREFIX=... prepends to every key.
# Exit status: the example's (non-zero when bytes/bucket >= 256 or eviction leaves buckets).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --example memory
exec target/release/examples/memory "${1:-1000000}"
