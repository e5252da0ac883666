#!/usr/bin/env bash
# Runs the load benchmark (and the criterion micro-benches with --micro); other arguments go
# to the load benchmark (--quick, --only, --modes, --out). Installs the peers it
# compares with when they are missing and this is a Debian machine with root: fyntr 0.4.8 from
# crates.io, tinyproxy and squid from Debian. Bounded: about 5 minutes for the load benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /tmp/fyntr-0.4.8/bin/fyntr ]; then
    cargo install fyntr --version 0.4.8 --root /tmp/fyntr-0.4.8 || echo "fyntr 0.4.8 not installed; skipped"
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v tinyproxy >/dev/null || missing+=(tinyproxy)
    [ -x /usr/sbin/squid ] || missing+=(squid)
    if ((${#missing[@]})); then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        # The packages start their system services; the benchmark runs its own instances, so
        # stop those services through their init system (which knows their PIDs), and nothing
        # else of that name that may run on this host.
        for service in tinyproxy squid; do
            systemctl stop "$service" 2>/dev/null || service "$service" stop 2>/dev/null || true
        done
    fi
fi
micro=false
args=()
for arg in "$@"; do
    if [ "$arg" = "--micro" ]; then micro=true; else args+=("$arg"); fi
done
cargo bench --bench load -- "${args[@]}"
if $micro; then
    cargo bench --bench sched
    cargo bench --bench parser
fi
