# shellcheck shell=bash
# .ci/e2e.sh: `./build.sh e2e`, the end-to-end suite (tests/e2e) on
# salt-master, salt-minion and the Saltpeter server, with its own venv
# (.venv-e2e: Salt and the whole server, pinned in tests/salt_pins) and the
# N+1 binary of its upgrade test.

# What .venv-e2e holds: tests/salt_pins' SALT_E2E_PINS, every package pinned.
# shellcheck disable=SC2206 # the pins are words, over several lines
E2E_PINS=($SALT_E2E_PINS)

# e2e_venv_has_salt: .venv-e2e has SALT_E2E and what the suite imports.
e2e_venv_has_salt() {
    "$E2E_PYTHON" -c 'import salt.version, saltpeter.main, websockets, pytest, sys; sys.exit(salt.version.__version__ != sys.argv[1])' "$SALT_E2E" 2>/dev/null
}

# Salt (pinned in tests/salt_pins: unpinned, pip backtracks through many versions) and the full
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
    cached_venv "$E2E_VENV" python3 "${E2E_PINS[@]}"
    if ! e2e_venv_has_salt; then
        say "installing Salt $SALT_E2E and ${#E2E_PINS[@]} pinned packages (tests/salt_pins) into $E2E_VENV (minutes on a fresh machine; then cached in $CACHE_DIR)"
        # --no-deps: every package is pinned (tests/salt_pins says why).
        $VENV_PIP --no-deps "${E2E_PINS[@]}"
        e2e_venv_has_salt || {
            echo "build.sh: $E2E_VENV has no Salt $SALT_E2E (or cannot import what the suite needs) after installing tests/salt_pins' SALT_E2E_PINS" >&2
            exit 1
        }
        say "e2e dependencies installed in $((SECONDS - started)) s"
    fi
}

# The N+1 of the e2e upgrade test (tests/e2e/test_deploy.py): the x86_64
# binary built again with SP_WRAPPER_VERSION set to VERSION's last number
# plus one (src/wire/protocol.rs), so the version it reports really differs, into
# target/e2e-next/. With build_arch's flags, cargo recompiles only our crate
# (~26 s), and the next plain build only that again.
E2E_NEXT_BIN=target/e2e-next/sp_wrapper
build_e2e_next() {
    local next="${VERSION%.*}.$((${VERSION##*.} + 1))" says
    say "building $next of the x86_64 binary for the e2e upgrade test (SP_WRAPPER_VERSION=$next)"
    SP_WRAPPER_VERSION=$next cargo build --release --locked --target "$TARGET" --config "$(remap_paths "$TARGET")"
    mkdir -p target/e2e-next
    cp "target/$TARGET/release/sp_wrapper" "$E2E_NEXT_BIN.new"
    mv -f "$E2E_NEXT_BIN.new" "$E2E_NEXT_BIN"
    says=$("$E2E_NEXT_BIN" --version)
    [ "$says" = "sp_wrapper $next" ] || { echo "build.sh: $E2E_NEXT_BIN says '$says', not 'sp_wrapper $next'" >&2; exit 1; }
}

# Runs pytest in the background so a TERM/INT/HUP to build.sh reaches it:
# its teardown then stops salt-master, salt-minion, Saltpeter and the agents.
e2e_suite() {
    local pid status=0 started=$SECONDS
    build_e2e_next
    say "end-to-end suite: salt-master, salt-minion and the Saltpeter server on 127.0.0.1, dist/sp_wrapper as the wrapper, the packages in dist/"
    SP_E2E_NEXT_WRAPPER="$PWD/$E2E_NEXT_BIN" "$E2E_PYTHON" -m pytest -p no:cacheprovider -v -ra tests/e2e &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 143' TERM INT HUP
    wait "$pid" || status=$?
    trap - TERM INT HUP
    say "end-to-end suite: $((SECONDS - started)) s, exit $status"
    return "$status"
}

# The suite's deploy tests (tests/e2e/test_deploy.py) serve the packages
# `package` made from the Salt master's file server.
e2e() {
    deps
    package
    deps_e2e
    e2e_suite
}
