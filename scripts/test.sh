#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (cmake for pingora's
# build, redis-server for the Redis tests, promtool for the alert rules), then format, lint, tests, and a check of every
# shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# promtool (from Debian's prometheus package) checks the alert rules and dashboard queries.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo build"
cargo build --bins
echo "== tollgate check on every shipped config"
for f in conf/*.json; do
  ./target/debug/tollgate check -c "$f"
done
echo "== cargo test"
# Benches are compiled by clippy --all-targets above; criterion takes no test flags.
cargo test -- --test-threads="${TEST_THREADS:-2}"
