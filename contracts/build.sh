#!/usr/bin/env bash
# Builds the shipped AssemblyScript contracts into checked-in .wasm files (pinned compiler from
# package-lock.json). `./build.sh check` rebuilds into a temporary directory and compares the
# hashes with the checked-in files instead (the reproducibility check CI runs).
set -euo pipefail
cd "$(dirname "$0")"
CONTRACTS=(escrow paid_storage consent moderation echo_bot)
FLAGS=(--runtime stub -O3 --noAssert --use abort= --exportStart _initialize --initialMemory 1 --maximumMemory 16)
if ! command -v npx >/dev/null 2>&1; then
  echo "contracts: SKIPPED: npm/npx is not installed here; the checked-in .wasm files are used as they are"
  exit 0
fi
if [ ! -x node_modules/.bin/asc ]; then
  if ! npm ci --no-audit --no-fund >/dev/null 2>&1; then
    echo "contracts: SKIPPED: npm ci failed (is the npm registry reachable?); the checked-in .wasm files are used as they are"
    exit 0
  fi
fi
out=.
if [ "${1:-}" = "check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
for c in "${CONTRACTS[@]}"; do
  node_modules/.bin/asc "$c.ts" "${FLAGS[@]}" -o "$out/$c.wasm"
done
if [ "${1:-}" = "check" ]; then
  fail=0
  for c in "${CONTRACTS[@]}"; do
    if cmp -s "$c.wasm" "$out/$c.wasm"; then
      echo "contracts: $c.wasm reproduces ($(sha256sum "$c.wasm" | cut -c1-16))"
    else
      echo "contracts: $c.wasm DIFFERS from a rebuild of $c.ts: run contracts/build.sh and commit the .wasm"
      fail=1
    fi
  done
  exit $fail
fi
