# shellcheck shell=bash
# .ci/salt.sh: `./build.sh salt-id` and `./build.sh old-salt` (root), the
# suites against the Salts of tests/salt_pins: the machine id against
# Salt's own, and old Salt launching the agent; and those Salts, installed
# once per set of pins outside the checkout.

# The Salts the differential test (tests/salt_id) asks for the minion id,
# besides SALT_E2E (the e2e venv): SALT_OLD on Python 2.7 (the last line
# CentOS 6 minions run) and SALT_LTS on Python 3.10, from pyenv (versions
# and pins: tests/salt_pins). Only what
# salt.config.minion_config (and salt-call --local) import, pinned,
# --no-deps, into a directory named by the pins, outside the checkout so that
# a fresh clone reuses it ($SP_SALT_ORACLES, else ~/.cache/sp-salt-oracles/
# <salt>-py<version>-<hash of the pins>): present and importable, it is
# reused, so a second run installs nothing.
PY27=${SP_PY27:-/root/.pyenv/versions/$SALT_OLD_PYTHON/bin/python}
PY310=${SP_PY310:-/root/.pyenv/versions/$SALT_LTS_PYTHON/bin/python}
SALT_ORACLES_DIR=${SP_SALT_ORACLES:-${XDG_CACHE_HOME:-$HOME/.cache}/sp-salt-oracles}
# Filled by deps_salt_oracles: LABEL=PYTHON:PYTHONPATH for each Salt that can
# run here, and the reasons for those that cannot.
SALT_ORACLES=()
SALT_ORACLES_SKIPPED=()

# salt_oracle LABEL PYTHON PINS...: install (once) and register one Salt.
salt_oracle() {
    local label=$1 python=$2 dir pyver hash tmp
    shift 2
    if [ ! -x "$python" ]; then
        SALT_ORACLES_SKIPPED+=("Salt $label: no $python (pyenv install it, or set SP_PY27/SP_PY310)")
        return 0
    fi
    pyver=$("$python" -c 'import platform; print(platform.python_version())')
    hash=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
    dir="$SALT_ORACLES_DIR/salt-$label-py$pyver-$hash"
    if ! PYTHONPATH="$dir" "$python" -c 'import salt.config' >/dev/null 2>&1; then
        say "installing Salt $label for Python $pyver into $dir ($*)"
        mkdir -p "$SALT_ORACLES_DIR"
        # Into a directory of our own, renamed when complete: a concurrent
        # run never sees half an install.
        tmp=$(mktemp -d "$dir.XXXXXX")
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" "$@" 2>&1 |
            grep -v -e DEPRECATION -e 'Running pip as' || true
        if ! PYTHONPATH="$tmp" "$python" -c 'import salt.config'; then
            echo "build.sh: Salt $label installed into $tmp cannot import salt.config (output above)" >&2
            exit 1
        fi
        rm -rf "$dir" && mv "$tmp" "$dir"
    fi
    SALT_ORACLES+=("$label=$python:$dir")
}

deps_salt_oracles() {
    local started=$SECONDS
    SALT_ORACLES=() SALT_ORACLES_SKIPPED=()
    # shellcheck disable=SC2086 # the pins are words
    salt_oracle "$SALT_OLD" "$PY27" $SALT_OLD_PINS
    # shellcheck disable=SC2086
    salt_oracle "$SALT_LTS" "$PY310" $SALT_LTS_PINS
    if [ -x "$E2E_PYTHON" ] && e2e_venv_has_salt; then
        SALT_ORACLES+=("$SALT_E2E=$PWD/$E2E_PYTHON:")
    else
        SALT_ORACLES_SKIPPED+=("Salt $SALT_E2E: not in $E2E_PYTHON (./build.sh e2e installs it)")
    fi
    say "Salt oracles ready in $((SECONDS - started)) s: ${SALT_ORACLES[*]%%=*}"
}

# The differential test of the machine id: every case of
# tests/salt_id/corpus.py, computed by each Salt and by dist/sp_wrapper
# (--print-machine-id, no SP_MACHINE_ID), must be equal. Root (namespaces).
salt_id_suite() {
    local started=$SECONDS why
    if [ "$(id -u)" -ne 0 ]; then
        say "SKIPPED the machine-id differential test: it needs root (mount, UTS and network namespaces)"
        return 0
    fi
    deps_salt_oracles
    for why in "${SALT_ORACLES_SKIPPED[@]}"; do
        say "SKIPPED $why"
    done
    local args=()
    for oracle in "${SALT_ORACLES[@]}"; do
        args+=(--salt "$oracle")
    done
    say "machine id: tests/salt_id against ${SALT_ORACLES[*]%%=*}, dist/sp_wrapper"
    python3 tests/salt_id/differential.py --bin dist/sp_wrapper "${args[@]}"
    say "machine-id differential test: $((SECONDS - started)) s"
}

# The Salt that old hosts run, launching the agent: salt-call --local
# cmd.run_all with the arguments Saltpeter 0.9.32 passes, on SALT_OLD and
# SALT_LTS (the e2e suite is SALT_E2E), the agent reporting to the real endpoint.
old_salt_suite() {
    local started=$SECONDS oracle args=()
    if [ "$(id -u)" -ne 0 ]; then
        say "SKIPPED the old-Salt launch test: it needs root (the job runs as nobody)"
        return 0
    fi
    [ ${#SALT_ORACLES[@]} -gt 0 ] || deps_salt_oracles
    for oracle in "${SALT_ORACLES[@]}"; do
        case "$oracle" in
            "$SALT_OLD"=* | "$SALT_LTS"=*) args+=(--salt "$oracle") ;;
        esac
    done
    if [ ${#args[@]} -eq 0 ]; then
        say "SKIPPED the old-Salt launch test: neither Salt $SALT_OLD nor $SALT_LTS is installable here (above)"
        return 0
    fi
    say "old Salt: salt-call --local cmd.run_all of dist/sp_wrapper, as Saltpeter 0.9.32 calls it, to the real endpoint"
    # shellcheck disable=SC2153 # PYTHON: .ci/lib.sh's .venv python, not a misspelt local
    python3 tests/salt_call/old_salt_call.py --bin dist/sp_wrapper --endpoint-python "$PWD/$PYTHON" "${args[@]}"
    say "old-Salt launch test: $((SECONDS - started)) s"
}
