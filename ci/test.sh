#!/usr/bin/env bash
# The test command: everything CI checks, runnable on a fresh machine.
# Installs what the tests need when it is missing (curl, openssl, ss, git, wget, Go: Debian
# packages; requests, PySocks and prometheus-client: PyPI), then runs formatting and lint checks, every unit and
# integration test, and compiles the benches.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v wget >/dev/null 2>&1 || missing+=(wget)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
if ((${#missing[@]})); then
    echo "ci/test.sh: installing ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# The metrics tests parse /metrics with the Prometheus project's own Python parser.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "ci/test.sh: installing prometheus-client"
    python3 -m pip install --quiet prometheus-client 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages prometheus-client
fi
# Python clients of the SOCKS5 tests: requests with PySocks (socks5h:// URLs).
if ! python3 -c 'import requests, socks' >/dev/null 2>&1; then
    echo "ci/test.sh: installing requests and PySocks"
    python3 -m pip install --quiet requests pysocks 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages requests pysocks
fi

bash ci/lint.sh
cargo build --release --workspace
cargo test --workspace --all-targets
cargo bench --workspace --no-run
# Smoke test of the load benchmark (no threshold): fyntr's own modes against direct.
cargo bench --bench load -- --quick --modes direct,fyntr-io-uring,fyntr-tokio --out target/load-smoke
echo "ci/test.sh: all checks passed"
