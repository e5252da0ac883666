#!/usr/bin/env bash
# Fuzzes the CONNECT parser with cargo-fuzz (libFuzzer). Needs a nightly toolchain and
# `cargo install cargo-fuzz`; the normal test suite runs the same property with proptest.
# Usage: ci/fuzz.sh [SECONDS]   (default 60; bounded)
set -euo pipefail
cd "$(dirname "$0")/fuzz"
seconds="${1:-60}"
cargo +nightly fuzz run connect_parse -- -max_total_time="$seconds" -max_len=40000
