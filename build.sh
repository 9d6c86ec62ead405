#!/usr/bin/env bash
# build.sh: build, test, demo, benchmark and package sp_wrapper.
#
#   ./build.sh [build]     static release binary -> dist/sp_wrapper (default)
#   ./build.sh build-local release binary for this host -> dist/sp_wrapper-local
#   ./build.sh test        everything CI runs (installs what it needs first)
#   ./build.sh deps        the musl target, .venv with the real Saltpeter endpoint,
#                          and the packaging tools from Debian
#   ./build.sh demo        build, run one job against the real endpoint, show the result
#   ./build.sh bench       side-by-side benchmark against the Python wrapper 0.9.30
#   ./build.sh e2e         end-to-end suite: salt-master, salt-minion, Saltpeter server (root)
#   ./build.sh e2e-bench   Salt's cmd.run_all time, sp_wrapper vs the Python wrapper (root)
#   ./build.sh package     a .deb and an .rpm per arch built in dist/ (packaging/)
#   ./build.sh clean
set -euo pipefail
cd "$(dirname "$0")"

TARGET=x86_64-unknown-linux-musl
VENV=.venv
PYTHON="$VENV/bin/python"
# The end-to-end suite's own venv (Salt and the whole Saltpeter server, ~200
# MB), apart from .venv so that ./build.sh deps stays a quick install.
E2E_VENV=.venv-e2e
E2E_PYTHON="$E2E_VENV/bin/python"
MAX_SIZE=$((1024 * 1024))
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

say() { printf '==> %s\n' "$*"; }

deps_rust() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        say "installing the Rust target $TARGET"
        if ! rustup target add "$TARGET"; then
            echo "build.sh: cannot install the Rust target $TARGET; run 'rustup target add $TARGET' with network access to the Rust dist server, then retry" >&2
            exit 1
        fi
    fi
}

deps_python() {
    if [ ! -x "$PYTHON" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$PYTHON" -c 'import saltpeter.machines_endpoint, websockets' 2>/dev/null; then
        say "installing the real Saltpeter endpoint (saltpeter==0.9.32) into $VENV"
        "$PYTHON" -m pip install --quiet --no-deps 'saltpeter==0.9.32' websockets
    fi
    # The Python reference wrapper, for the side-by-side benchmark.
    if [ ! -f "$VENV/ref0930/saltpeter/wrapper.py" ]; then
        say "installing the Python reference wrapper (saltpeter==0.9.30) into $VENV/ref0930"
        "$PYTHON" -m pip install --quiet --no-deps --target "$VENV/ref0930" 'saltpeter==0.9.30'
    fi
}

# What packaging and its checks need, from Debian: dpkg-dev and rpm build the
# packages, help2man makes the man page, lintian and rpmlint judge them,
# logrotate is driven by the rotation test, qemu-user runs the binaries of
# other arches, groff renders the man page; jinja2 and PyYAML (in .venv)
# render the Salt state of docs/deploy.md.
deps_packaging() {
    local tool missing=()
    for tool in dpkg-deb:dpkg-dev rpmbuild:rpm help2man:help2man lintian:lintian \
        rpmlint:rpmlint logrotate:logrotate qemu-aarch64:qemu-user groff:groff file:file; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} from Debian (packaging)"
        if ! { apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }; }; then
            echo "build.sh: cannot install ${missing[*]}; as root with network access run 'apt-get update && apt-get install -y ${missing[*]}', then retry" >&2
            exit 1
        fi
    fi
    deps_python
    if ! "$PYTHON" -c 'import jinja2, yaml' 2>/dev/null; then
        say "installing jinja2 and PyYAML into $VENV (the Salt state check)"
        "$PYTHON" -m pip install --quiet --no-deps jinja2 MarkupSafe PyYAML
    fi
}

deps() {
    deps_rust
    deps_python
    deps_packaging
}

build() {
    deps_rust
    say "building the static release binary ($TARGET)"
    cargo build --release --locked --target "$TARGET"
    mkdir -p dist
    # Install by rename: a daemon still running the old file (tests leave some
    # finishing their delivery) makes a plain cp fail with "Text file busy".
    cp "target/$TARGET/release/sp_wrapper" dist/sp_wrapper.new
    mv -f dist/sp_wrapper.new dist/sp_wrapper
    if command -v file >/dev/null; then file dist/sp_wrapper; fi
    local size
    size=$(stat -c %s dist/sp_wrapper)
    say "dist/sp_wrapper: $size bytes ($((size / 1024)) KiB; bound $((MAX_SIZE / 1024)) KiB)"
    if [ "$size" -gt "$MAX_SIZE" ]; then
        echo "build.sh: dist/sp_wrapper is $size bytes, over the $MAX_SIZE-byte bound" >&2
        exit 1
    fi
}

build_local() {
    cargo build --release --locked
    mkdir -p dist
    cp target/release/sp_wrapper dist/sp_wrapper-local.new
    mv -f dist/sp_wrapper-local.new dist/sp_wrapper-local
    say "dist/sp_wrapper-local"
}

run_tests() {
    deps
    build
    say "format and lint"
    cargo fmt --all -- --check
    cargo clippy --locked --all-targets -- -D warnings
    export SP_TEST_PYTHON="$PWD/$PYTHON"
    say "unit, integration and conformance tests (host build)"
    cargo test --release --locked
    # Tests that need root are #[ignore]d with their reason, so a plain
    # `cargo test` as a user reports them as ignored, never as passed. CI
    # runs as root: run them here, where they fail if they cannot run.
    say "tests that need root (SP_USER)"
    cargo test --release --locked --test security -- --ignored
    say "static binary checks"
    file dist/sp_wrapper | grep -q 'statically linked' || { echo "build.sh: dist/sp_wrapper is not statically linked" >&2; exit 1; }
    say "old-kernel tests: the conformance suite again, static binary under a seccomp filter (syscalls after 2.6.32 -> ENOSYS)"
    SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" cargo test --release --locked --test old_kernel --test conformance -- --include-ignored
    say "packages: build, lint, contents, each arch's binary against the real endpoint, log rotation"
    package
    bash tests/packaging/check.sh "$VERSION" dist
    deps_e2e
    e2e_suite
}

demo() {
    deps
    build
    say "running a job through dist/sp_wrapper against the real Saltpeter endpoint"
    "$PYTHON" tests/harness/demo.py dist/sp_wrapper
}

bench() {
    deps
    build
    cargo build --release --locked --example ack_sink
    say "benchmark: sp_wrapper vs the Python wrapper 0.9.30 (takes a few minutes)"
    "$PYTHON" tests/bench/bench.py --wrapper dist/sp_wrapper --python-wrapper "$VENV/ref0930" --sink target/release/examples/ack_sink
    e2e_bench
}

# Salt (pinned: unpinned, pip backtracks through many versions) and the full
# Saltpeter server. A Salt dependency builds from source, hence gcc and the
# Python headers, from Debian when we are root and they are missing.
deps_e2e() {
    local missing=() started=$SECONDS
    command -v gcc >/dev/null || missing+=(gcc)
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        missing+=(python3-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
            echo "build.sh: the e2e suite needs ${missing[*]} (Salt builds a dependency from source); install them, then retry" >&2
            exit 1
        fi
        say "installing ${missing[*]} from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if [ ! -x "$E2E_PYTHON" ]; then
        say "creating $E2E_VENV"
        python3 -m venv "$E2E_VENV"
    fi
    if ! "$E2E_PYTHON" -c 'import salt.version, saltpeter.main, websockets, pytest, sys; sys.exit(salt.version.__version__ != "3008.3")' 2>/dev/null; then
        say "installing salt==3008.3, saltpeter==0.9.32, websockets and pytest into $E2E_VENV (minutes on a fresh machine)"
        "$E2E_PYTHON" -m pip install --quiet 'salt==3008.3' 'saltpeter==0.9.32' websockets 'pytest>=8,<10'
        say "e2e dependencies installed in $((SECONDS - started)) s"
    fi
}

# Runs pytest in the background so a TERM/INT/HUP to this script reaches it:
# its teardown then stops salt-master, salt-minion, Saltpeter and the agents.
e2e_suite() {
    local pid status=0 started=$SECONDS
    say "end-to-end suite: salt-master, salt-minion and the Saltpeter server on 127.0.0.1, dist/sp_wrapper as the wrapper"
    "$E2E_PYTHON" -m pytest -p no:cacheprovider -v -ra tests/e2e &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 143' TERM INT HUP
    wait "$pid" || status=$?
    trap - TERM INT HUP
    say "end-to-end suite: $((SECONDS - started)) s, exit $status"
    return "$status"
}

e2e() {
    deps
    build
    deps_e2e
    e2e_suite
}

e2e_bench() {
    if [ "$(id -u)" -ne 0 ]; then
        say "e2e bench skipped: it runs salt-master and salt-minion as root"
        return 0
    fi
    deps_e2e
    say "Salt's cmd.run_all time: sp_wrapper vs the Python wrapper 0.9.30 through salt-master and salt-minion"
    "$E2E_PYTHON" tests/e2e/bench_run_all.py --wrapper dist/sp_wrapper \
        --python-wrapper "$VENV/ref0930/saltpeter/wrapper.py" --runs 20
}

# Packaging (a .deb and an .rpm for every arch in dist/) lives in
# packaging/package.sh so this file stays a dispatcher. It packages what is
# built: dist/sp_wrapper (x86_64, refreshed here) and dist/<triple>/sp_wrapper
# from build-all.
package() {
    deps_packaging
    build
    rm -f dist/saltpeter-agent_*.deb dist/saltpeter-agent-*.rpm
    bash packaging/package.sh "$VERSION" dist dist
}

case "${1:-build}" in
    build) build ;;
    build-local) build_local ;;
    test) run_tests ;;
    deps) deps ;;
    demo) demo ;;
    bench) bench ;;
    package) package ;;
    e2e) e2e ;;
    e2e-bench) deps; build; e2e_bench ;;
    clean) cargo clean; rm -rf dist ;;
    *)
        echo "usage: ./build.sh [build|build-local|test|deps|demo|bench|package|e2e|e2e-bench|clean]" >&2
        exit 2
        ;;
esac
