#!/usr/bin/env bash
# build.sh: build, test, demo, benchmark and package sp_wrapper.
#
#   ./build.sh [build]     static release binary -> dist/sp_wrapper (default)
#   ./build.sh build-local release binary for this host -> dist/sp_wrapper-local
#   ./build.sh test        everything CI runs (installs what it needs first)
#   ./build.sh deps        the musl target and .venv with the real Saltpeter endpoint
#   ./build.sh demo        build, run one job against the real endpoint, show the result
#   ./build.sh bench       side-by-side benchmark against the Python wrapper 0.9.30
#   ./build.sh package     dist/*.deb and dist/*.rpm
#   ./build.sh clean
set -euo pipefail
cd "$(dirname "$0")"

TARGET=x86_64-unknown-linux-musl
VENV=.venv
PYTHON="$VENV/bin/python"
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

deps() {
    deps_rust
    deps_python
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
    say "static binary checks"
    file dist/sp_wrapper | grep -q 'statically linked' || { echo "build.sh: dist/sp_wrapper is not statically linked" >&2; exit 1; }
    say "old-kernel tests: the conformance and guardian suites again, static binary under a seccomp filter (syscalls after 2.6.32 -> ENOSYS)"
    SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" cargo test --release --locked --test old_kernel --test conformance --test guardian -- --include-ignored
    say "packages"
    package
    bash tests/packaging/check.sh "$VERSION" dist
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
}

# Packaging (.deb and .rpm) lives in tests/packaging/package.sh so this file
# stays a dispatcher; it is given the version and the built binary.
package() {
    build
    bash tests/packaging/package.sh "$VERSION" dist/sp_wrapper dist
}

case "${1:-build}" in
    build) build ;;
    build-local) build_local ;;
    test) run_tests ;;
    deps) deps ;;
    demo) demo ;;
    bench) bench ;;
    package) package ;;
    clean) cargo clean; rm -rf dist ;;
    *)
        echo "usage: ./build.sh [build|build-local|test|deps|demo|bench|package|clean]" >&2
        exit 2
        ;;
esac
