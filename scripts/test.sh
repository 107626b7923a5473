#!/usr/bin/env bash
# The workspace's test command. Some test suites start real peers on
# loopback (dnsmasq, etcd, openssl, curl, redis-server, a gRPC server on
# Python's grpcio, a Prometheus server): this script installs the Debian packages of whichever
# of those programs are missing, then runs `cargo test --workspace` with
# this script's arguments.
#
#   scripts/test.sh                    # every test
#   scripts/test.sh breaker            # every test whose name contains "breaker"
#   scripts/test.sh -p mesh-tls        # one crate's tests (no --workspace then)
#   scripts/test.sh --dry-run          # say what it would install and run, do neither
#
# .ci/run calls it too, so this is the one list of what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each line: the Debian package, the program the tests start (looked up on
# PATH, as the tests do; `python3:MODULE` is a python3 that can import
# MODULE), and the tests that need it.
PEERS=(
    "dnsmasq-base    dnsmasq       mesh-discover: Kubernetes DNS discovery (A/AAAA and SRV records)"
    "etcd-server     etcd          mesh-discover: the worked etcd v3 registry"
    "openssl         openssl       mesh-tls: mutual TLS against openssl s_server and s_client"
    "curl            curl          mesh-tls, mesh-health: mutual TLS and health probes through curl"
    "redis-server    redis-server  mesh-health: the Redis check"
    "python3-grpcio  python3:grpc  tower-mesh-tests: gRPC interop against gRPC's C core (tests/peers/grpc_peer.py)"
    "prometheus      promtool      tower-mesh-tests: promtool checks the exposition; a Prometheus server scrapes the gateway (tests/prometheus.rs)"
)

dry_run=false
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=true
    shift
fi

say() { printf 'scripts/test.sh: %s\n' "$*" >&2; }
fail() {
    say "$*"
    exit 1
}

# Debian keeps dnsmasq in /usr/sbin, which is not on a normal user's PATH;
# the tests look programs up on PATH, so add the sbin directories for them.
for dir in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) if [ -d "$dir" ]; then PATH="$PATH:$dir"; fi ;;
    esac
done
export PATH

# Whether a PEERS program is here. A Python module is looked for as the
# tests look for it: with the python3 on PATH, then with Debian's own (a
# pyenv or virtualenv first on PATH does not see Debian's packages).
have() {
    case "$1" in
        python3:*)
            local python
            for python in python3 /usr/bin/python3; do
                if "$python" -c "import ${1#python3:}" >/dev/null 2>&1; then
                    return 0
                fi
            done
            return 1
            ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing_packages() {
    local peer package program
    for peer in "${PEERS[@]}"; do
        read -r package program _ <<<"$peer"
        if ! have "$program"; then
            printf '%s\n' "$package"
        fi
    done
}

mapfile -t missing < <(missing_packages)

if [ "${#missing[@]}" -gt 0 ]; then
    install_command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        fail "the tests need the programs of these Debian packages: ${missing[*]}," \
            "and apt-get is not here: install them with this system's package manager, then run scripts/test.sh again"
    fi
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            fail "the tests need the Debian packages ${missing[*]}, and this user is not root and has no sudo:" \
                "run as root: $install_command"
        fi
        as_root=(sudo)
        install_command="sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
    fi
    say "installing ${missing[*]}: the tests start these programs as peers on loopback"
    if $dry_run; then
        say "dry run: would run: $install_command"
    else
        # `${as_root[@]+...}` expands an empty array even under `set -u` in bash before 4.4.
        if ! ${as_root[@]+"${as_root[@]}"} apt-get update ||
            ! ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "${missing[@]}"; then
            fail "could not install ${missing[*]} (see apt-get's message above); install them with: $install_command"
        fi
        mapfile -t still_missing < <(missing_packages)
        if [ "${#still_missing[@]}" -gt 0 ]; then
            fail "installed, yet the programs of ${still_missing[*]} are not on PATH ($PATH)"
        fi
    fi
fi

# `--workspace` would override a package chosen with -p, so it is added
# only when the arguments before `--` choose none.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done

if $dry_run; then
    say "dry run: would run: cargo test ${scope[*]+${scope[*]} }$*"
    exit 0
fi
exec cargo test ${scope[@]+"${scope[@]}"} "$@"
