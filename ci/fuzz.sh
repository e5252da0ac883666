#!/usr/bin/env bash
# Fuzzes the CONNECT, SOCKS5 and plain HTTP parsers with cargo-fuzz (libFuzzer). Needs a nightly toolchain
# and `cargo install cargo-fuzz`; the normal test suite runs the same properties with proptest.
# Usage: ci/fuzz.sh [SECONDS]   (per target; default 60; bounded)
set -euo pipefail
cd "$(dirname "$0")/fuzz"
seconds="${1:-60}"
cargo +nightly fuzz run connect_parse -- -max_total_time="$seconds" -max_len=40000
cargo +nightly fuzz run socks5_parse -- -max_total_time="$seconds" -max_len=600
cargo +nightly fuzz run http_parse -- -max_total_time="$seconds" -max_len=40000
