# shellcheck shell=bash
# .ci/lib.sh: what the jobs of build.sh share: the tables they read
# (packaging/arches.sh, tests/salt_pins), the host's target, the Python
# environments' names, the version, and the helpers say,
# fail_if_selects_nothing and cached_venv. build.sh sources it first, then
# the jobs; like them it defines variables and functions only, and runs in
# the checkout's top directory.

# The arches: packaging/arches.sh, the one table (triple, Debian and RPM
# names, qemu program, how the suites run it, kernel floor, file(1) machine).
# shellcheck source=packaging/arches.sh
. packaging/arches.sh
# The host's arch: `./build.sh build` and `test` build it first, and it alone
# is also dist/sp_wrapper (as packaging/arches.sh's arch_binary knows).
# shellcheck disable=SC2034 # read by the jobs
TARGET=x86_64-unknown-linux-musl
VENV=.venv
# shellcheck disable=SC2034 # read by the jobs
PYTHON="$VENV/bin/python"
# The end-to-end suite's own venv (Salt and the whole Saltpeter server, ~200
# MB), apart from .venv so that ./build.sh deps stays a quick install.
E2E_VENV=.venv-e2e
# shellcheck disable=SC2034 # read by the jobs
E2E_PYTHON="$E2E_VENV/bin/python"

# Virtual environments live here, one per interpreter and set of pins, so a
# fresh clone on the same machine (CI) reuses them instead of reinstalling;
# .venv and .venv-e2e are symlinks to them. pip keeps its download cache in
# ~/.cache/pip as ever.
CACHE_DIR=${SP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/saltpeter-agent}

# The Salt releases tested and their pins: tests/salt_pins (how to bump them
# is said there).
# shellcheck source=tests/salt_pins
. tests/salt_pins

# The suites run again under the 2.6.32 seccomp filter (the old-kernel
# step of `test` and of the soak): every suite whose launches go through the
# harness's Launch, which applies the filter (check::, minion_config:: and
# bounded::'s server-cost run start the binary otherwise).
# shellcheck disable=SC2034 # read by test.sh and soak.sh
OLD_KERNEL_SUITES=(old_kernel:: conformance:: guardian:: crash:: record:: delivery:: security:: reconnects::)
# shellcheck disable=SC2034 # read by the jobs
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# A test-only override of the version compiled in (src/wire/protocol.rs): set
# by build_e2e_next alone, never inherited by a release build.
unset SP_WRAPPER_VERSION

say() { printf '==> %s\n' "$*"; }

# fail_if_selects_nothing COMMAND... -- HARNESS_ARGS...: run a `cargo test`
# command (`cargo test ...`, or `env VAR=... cargo test ...`) and fail, as
# its tests failing would, when it selects nothing: each filter must select
# a test that ran (ok or FAILED; exact names with --exact), each --skip must
# name an existing test (`-- --list`), and some test must run. A renamed
# test or module otherwise makes a step run 0 tests and pass (issue 24).
fail_if_selects_nothing() {
    local command=() harness=() arg dashes='' filters=() skips=() exact='' i=0
    for arg in "$@"; do
        if [ -z "$dashes" ] && [ "$arg" = -- ]; then
            dashes=1
        elif [ -n "$dashes" ]; then
            harness+=("$arg")
        else
            command+=("$arg")
        fi
    done
    while [ $i -lt ${#harness[@]} ]; do
        case "${harness[$i]}" in
            --skip) i=$((i + 1)) && skips+=("${harness[$i]}") ;;
            --exact) exact=1 ;;
            --test-threads | --format | --color | --logfile) i=$((i + 1)) ;;
            -*) ;;
            *) filters+=("${harness[$i]}") ;;
        esac
        i=$((i + 1))
    done
    local log status=0 ran listed missing=()
    log=$(mktemp)
    "${command[@]}" -- "${harness[@]}" 2>&1 | tee "$log" || status=$?
    ran=$(sed -n 's/^test \(.*\) \.\.\. \(ok\|FAILED\)$/\1/p' "$log")
    rm -f "$log"
    for arg in "${filters[@]}"; do
        grep -qF ${exact:+-x} -e "$arg" <<<"$ran" || missing+=("filter '$arg' selected no test that ran")
    done
    if [ ${#skips[@]} -gt 0 ]; then
        listed=$("${command[@]}" -- --list 2>/dev/null | sed -n 's/: test$//p') || true
        for arg in "${skips[@]}"; do
            grep -qF ${exact:+-x} -e "$arg" <<<"$listed" || missing+=("--skip '$arg' names no test")
        done
    fi
    [ -n "$ran" ] || missing+=("no test ran")
    if [ ${#missing[@]} -gt 0 ]; then
        for arg in "${missing[@]}"; do
            echo "build.sh: FAIL: $arg (${command[*]} -- ${harness[*]})" >&2
        done
        return 1
    fi
    say "$(grep -c . <<<"$ran") tests ran; every filter selected a test${skips[*]:+, every --skip names one}"
    return "$status"
}

# cached_venv LINK PYTHON PIN...: make LINK a symlink to the virtual
# environment in CACHE_DIR keyed by PYTHON's version and the pins, creating
# that environment (empty) if it is not there yet, and set VENV_PIP to the
# environment's own python, by its real path, for the caller to pip-install
# with. (Run through the symlink, python takes the checkout's path for its
# prefix, and pip would write that path into every script's #! line: the
# next clone would find salt-master pointing into a deleted checkout.) An
# environment whose scripts point anywhere but into itself (made that way
# before) is made again. The caller installs into it and checks what it
# needs, so a cached environment is only trusted as far as those checks go.
VENV_PIP=
cached_venv() {
    local link=$1 python=$2 key dir script interpreter
    shift 2
    key=$({ "$python" -c 'import sys; print(sys.version)' && printf '%s\n' "$@"; } | sha256sum | cut -c1-12)
    dir="$CACHE_DIR/venvs/${link#.}-$key"
    mkdir -p "$CACHE_DIR/venvs"
    if [ -d "$dir/bin" ]; then
        for script in "$dir"/bin/*; do
            if [ ! -f "$script" ] || [ -L "$script" ]; then continue; fi
            interpreter=$(head -c 200 "$script" | sed -n '1s/^#!\([^ ]*\).*/\1/p')
            case "$interpreter" in
                "" | "$dir"/bin/*) ;;
                *)
                    say "$dir: $(basename "$script") runs $interpreter, outside the environment: making it again"
                    rm -rf "$dir"
                    break
                    ;;
            esac
        done
    fi
    if [ ! -x "$dir/bin/python" ]; then
        say "creating the virtual environment $dir (for $link: $*)"
        rm -rf "$dir"
        "$python" -m venv "$dir"
    fi
    if [ -L "$link" ] || [ ! -e "$link" ]; then
        ln -sfn "$dir" "$link"
    elif [ "$(readlink -f "$link")" != "$(readlink -f "$dir")" ]; then
        # An environment made before the cache: replaced by the cached one.
        rm -rf "$link"
        ln -sfn "$dir" "$link"
    fi
    # shellcheck disable=SC2034 # read by the jobs
    VENV_PIP="$dir/bin/python -m pip install --quiet --disable-pip-version-check"
}
