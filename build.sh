#!/usr/bin/env bash
# build.sh: build, test, demo, benchmark and package sp_wrapper.
#
#   ./build.sh [build]     static release binary -> dist/sp_wrapper (default)
#   ./build.sh build ARCH  one arch -> dist/<triple>/sp_wrapper; ARCH is a row of
#                          packaging/arches.sh by its short name (aarch64), Debian
#                          name (arm64) or triple
#   ./build.sh build-all   every arch -> dist/<triple>/sp_wrapper; armv7 is skipped, with
#                          the reason, when its toolchain is missing (docs/packaging.md)
#   ./build.sh test-arches [ARCH...]  the per-arch part of `test`: each binary proven
#   ./build.sh build-local release binary for this host -> dist/sp_wrapper-local
#   ./build.sh test        everything CI runs (installs what it needs first)
#   ./build.sh deps        the musl target, .venv with the real Saltpeter endpoint,
#                          and the packaging tools from Debian
#   ./build.sh demo        build, run one job against the real endpoint, show the result
#   ./build.sh soak [N]    the host and per-arch integration suites N times (10), every
#                          other round with every core kept busy by a CPU hog
#   ./build.sh bench       side-by-side benchmark against the Python wrapper 0.9.30
#   ./build.sh e2e         end-to-end suite: salt-master, salt-minion, Saltpeter server (root)
#   ./build.sh e2e-bench   Salt's cmd.run_all time, sp_wrapper vs the Python wrapper (root)
#   ./build.sh salt-id     the machine id vs the Salts of tests/salt_pins (root; tests/salt_id)
#   ./build.sh old-salt    salt-call --local cmd.run_all of the agent on the older Salts of tests/salt_pins (root)
#   ./build.sh package     a .deb and an .rpm for each arch whose binary is in dist/:
#                          x86_64 (built here), the others only after build-all
#                          (or build ARCH); it names the arches it skipped
#   ./build.sh repro [ARCH...]  package, then the x86_64 (or ARCH's) binary and packages
#                          built again elsewhere (path, HOME, no rust-src) must be identical
#   ./build.sh shellcheck  the lint of every shell script (part of `test`)
#   ./build.sh clean
set -euo pipefail
cd "$(dirname "$0")"

# The arches: packaging/arches.sh, the one table (triple, Debian and RPM
# names, qemu program, how the suites run it, kernel floor, file(1) machine).
# shellcheck source=packaging/arches.sh
. packaging/arches.sh
# The host's arch: `./build.sh build` and `test` build it first, and it alone
# is also dist/sp_wrapper (as packaging/arches.sh's arch_binary knows).
TARGET=x86_64-unknown-linux-musl
VENV=.venv
PYTHON="$VENV/bin/python"
# The end-to-end suite's own venv (Salt and the whole Saltpeter server, ~200
# MB), apart from .venv so that ./build.sh deps stays a quick install.
E2E_VENV=.venv-e2e
E2E_PYTHON="$E2E_VENV/bin/python"
MAX_SIZE=$((1024 * 1024))
# Virtual environments live here, one per interpreter and set of pins, so a
# fresh clone on the same machine (CI) reuses them instead of reinstalling;
# .venv and .venv-e2e are symlinks to them. pip keeps its download cache in
# ~/.cache/pip as ever.
CACHE_DIR=${SP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/saltpeter-agent}
ENDPOINT_PINS=('saltpeter==0.9.32' 'websockets==17.4')
# The Salt releases tested and their pins: tests/salt_pins (how to bump them
# is said there).
# shellcheck source=tests/salt_pins
. tests/salt_pins
# shellcheck disable=SC2206 # the pins are words, over several lines
E2E_PINS=($SALT_E2E_PINS)
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

# deps_rust_arches: the Rust target of every arch whose std rustup must
# have; armv7's may be missing (armv7_prebuilt, then std from rust-src).
deps_rust_arches() {
    local triples=() triple
    for triple in $(arch_triples); do
        [ "$triple" = "$ARMV7" ] || triples+=("$triple")
    done
    deps_rust "${triples[@]}"
}

# arch_qemus: PROGRAM:qemu-user for each row's qemu program (deps' lists).
arch_qemus() {
    local triple deb_arch rpm_arch qemu suites kernel_floor elf_machine
    for triple in $(arch_triples); do
        arch_fields "$triple"
        echo "$qemu:qemu-user"
    done
}

deps_rust() {
    local triple missing=()
    for triple in "$TARGET" "$@"; do
        rustup target list --installed 2>/dev/null | grep -qx "$triple" || missing+=("$triple")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing the Rust targets ${missing[*]}"
    if ! rustup target add "${missing[@]}"; then
        echo "build.sh: cannot install the Rust targets ${missing[*]}; run 'rustup target add ${missing[*]}' with network access to the Rust dist server, then retry" >&2
        exit 1
    fi
}

# The other arches (docs/packaging.md, "The binaries"): the Rust target of
# each row of packaging/arches.sh; for armv7, when rustup cannot download its
# std, std's sources (rust-src), Debian's musl for armhf, and clang to build
# LLVM's libunwind; qemu-user (each row's qemu program) to run the binaries
# of other arches, faketime for the after-2038 check. apt only when
# something is missing (and we are root).
deps_arches() {
    deps_rust_arches
    if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
        say "installing rust-src (armv7's std is built from source)"
        rustup component add rust-src ||
            echo "build.sh: cannot install rust-src; armv7 will be skipped" >&2
    fi
    local missing=() tool
    for tool in $(arch_qemus) faketime:faketime \
        clang:clang llvm-ar:llvm strace:strace readelf:binutils file:file; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    [ -f "$ARMV7_MUSL/libc.a" ] || missing+=(musl-dev:armhf)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "build.sh: missing ${missing[*]}; as root run 'dpkg --add-architecture armhf && apt-get update && apt-get install -y ${missing[*]}'" >&2
        return 0
    fi
    say "installing ${missing[*]} from Debian"
    if [[ " ${missing[*]} " == *" musl-dev:armhf "* ]] && ! dpkg --print-foreign-architectures | grep -qx armhf; then
        dpkg --add-architecture armhf
    fi
    # A mirror mid-sync can fail one index of `apt-get update`; the install
    # below says whether what we need was found.
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
        echo "build.sh: could not install ${missing[*]}; arches that need them are skipped" >&2
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
    VENV_PIP="$dir/bin/python -m pip install --quiet --disable-pip-version-check"
}

# The real endpoint (saltpeter==0.9.32 and websockets, which it imports but
# does not declare): all the demo needs besides the musl target.
deps_endpoint() {
    cached_venv "$VENV" python3 "${ENDPOINT_PINS[@]}"
    if ! "$PYTHON" -c 'import saltpeter.machines_endpoint, websockets' 2>/dev/null; then
        say "installing the real Saltpeter endpoint (${ENDPOINT_PINS[*]}) into $VENV"
        $VENV_PIP --no-deps "${ENDPOINT_PINS[@]}"
    fi
}

# The endpoint, and the Python reference wrapper for the side-by-side
# benchmark and the tests that compare with it.
deps_python() {
    deps_endpoint
    if [ ! -f "$VENV/ref0930/saltpeter/wrapper.py" ]; then
        say "installing the Python reference wrapper (saltpeter==0.9.30) into $VENV/ref0930"
        $VENV_PIP --no-deps --target "$VENV/ref0930" 'saltpeter==0.9.30'
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
        rpmlint:rpmlint logrotate:logrotate $(arch_qemus) groff:groff file:file; do
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
        $VENV_PIP --no-deps jinja2 MarkupSafe PyYAML
    fi
}

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
    python3 tests/salt_call/old_salt_call.py --bin dist/sp_wrapper --endpoint-python "$PWD/$PYTHON" "${args[@]}"
    say "old-Salt launch test: $((SECONDS - started)) s"
}

# Debian's libnss-extrausers: the directory-user test's users and groups that
# only NSS knows (tests/integration/common/extrausers.rs). Root and apt only;
# otherwise that test, root-only anyway, says what is missing.
deps_nss() {
    dpkg -s libnss-extrausers >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "build.sh: libnss-extrausers is missing (the directory-user test needs it); as root run 'apt-get install -y libnss-extrausers'" >&2
        return 0
    fi
    say "installing libnss-extrausers from Debian (the directory-user test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnss-extrausers >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnss-extrausers >/dev/null; } ||
        echo "build.sh: could not install libnss-extrausers; the directory-user test will fail saying so" >&2
}

# Debian's shellcheck, for the lint of the shell scripts (lint_shell). Root
# and apt only; otherwise say how, and fail: the lint must not pass unrun.
deps_shellcheck() {
    command -v shellcheck >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "build.sh: shellcheck is missing (the lint of the shell scripts needs it); as root run 'apt-get install -y shellcheck'" >&2
        exit 1
    fi
    say "installing shellcheck from Debian (the lint of the shell scripts)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null; } || {
        echo "build.sh: cannot install shellcheck; as root with network access run 'apt-get update && apt-get install -y shellcheck', then retry" >&2
        exit 1
    }
}

# shell_scripts: the project's shell files, found by what they say they
# are, not by a list: a #! line naming sh, bash or dash, or (for files that
# are only sourced, such as packaging/arches.sh and tests/salt_pins) a
# `# shellcheck shell=` directive in their first lines. NUL-separated.
shell_scripts() {
    local name
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' name; do
            [ -f "$name" ] || continue
            if head -n 1 "$name" | grep -Eq '^#!.*[/ ](ba|da)?sh( |$)' ||
                head -n 5 "$name" | grep -Eq '^# shellcheck shell='; then
                printf '%s\0' "$name"
            fi
        done
}

# lint_shell: shellcheck every shell file, following what they source;
# any finding (style included) fails the build.
lint_shell() {
    local scripts=()
    mapfile -d '' -t scripts < <(shell_scripts)
    [ ${#scripts[@]} -gt 0 ] || { echo "build.sh: found no shell scripts to lint" >&2; exit 1; }
    say "shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#scripts[@]} files: ${scripts[*]}"
    shellcheck --external-sources "${scripts[@]}"
}

deps() {
    deps_rust
    deps_arches
    deps_python
    deps_packaging
    deps_nss
    deps_shellcheck
}

build() {
    deps_rust
    build_arch "$TARGET"
}

# ---------------------------------------------------------------------------
# Every arch of packaging/arches.sh (docs/packaging.md, "The binaries").
# Output: dist/<triple>/sp_wrapper, and dist/sp_wrapper for x86_64 as ever.

# The one arch with code of its own: rustup may have no prebuilt std for it,
# and then std is built from rust-src, linked against Debian's musl-dev:armhf
# and a libunwind built here with clang (armv7_prebuilt, build_armv7,
# armv7_unit_tests; not reproducible by repro_check).
ARMV7=armv7-unknown-linux-musleabihf
# Debian's musl-dev:armhf (multiarch).
ARMV7_MUSL=/usr/lib/arm-linux-musleabihf
ARMV7_UNWIND=target/armv7-libunwind
# Set by build_armv7 when it cannot build, for the caller to print.
SKIP_REASON=

# triple_of ARCH: the triple of the row of packaging/arches.sh whose short
# name (the triple's first word), Debian name or triple ARCH is.
triple_of() {
    local triple deb_arch rpm_arch qemu suites kernel_floor elf_machine names=()
    for triple in $(arch_triples); do
        arch_fields "$triple"
        if [ "$1" = "${triple%%-*}" ] || [ "$1" = "$deb_arch" ] || [ "$1" = "$triple" ]; then
            echo "$triple"
            return 0
        fi
        names+=("${triple%%-*}")
    done
    echo "build.sh: unknown arch '$1' (${names[*]}: packaging/arches.sh)" >&2
    exit 2
}

# build_arch TRIPLE: build, install to dist/<triple>/sp_wrapper (and
# dist/sp_wrapper for x86_64), check. Returns 1 with SKIP_REASON set when
# armv7's toolchain is missing; exits on any other failure.
# remap_paths TRIPLE: a --config that maps the build machine's source
# directories, which the binary names in its panic locations, to fixed
# names: the cargo registry to /cargo, the toolchain's library sources
# (rust-src, which rustc prefers once installed) to /rustc. The binary
# then says nothing of where it was built, and 48 long paths shrink
# (x86_64: 1,039,592 -> 1,037,608 bytes; docs/packaging.md, "Size").
remap_paths() {
    local index flags
    # The registry's source directory exists only once a crate has been
    # unpacked into it: on a fresh CARGO_HOME the glob below would match
    # nothing and the first build would name it in full. cargo fetch unpacks
    # (offline when everything is in cargo's cache already).
    cargo fetch --locked --quiet --target "$1" >&2
    # Each registry's directory (index.crates.io-<hash of its URL>), so a
    # crate's files are /cargo/<crate>-<version>/...
    for index in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
        flags+="'--remap-path-prefix=${index%/}=/cargo',"
    done
    # rust-src as the prebuilt std names its own sources: /rustc/<commit>.
    printf "target.%s.rustflags=[%s'--remap-path-prefix=%s/lib/rustlib/src/rust=/rustc/%s']" \
        "$1" "$flags" "$(rustc --print sysroot)" "$(rustc -vV | sed -n 's/^commit-hash: //p')"
}

# shipped_link_flags TRIPLE: a --config that links the shipped binary
# without its DWARF unwind tables (.eh_frame: -67 KB on x86_64), by the
# linker script .cargo/no-eh-frame.ld (relative: the link runs in the
# checkout, whose path must not matter). Only here, not in
# .cargo/config.toml: unit tests built for a target unwind (the harness
# reports a failing test by catching its panic).
shipped_link_flags() {
    printf "target.%s.rustflags=['-C','link-arg=-T.cargo/no-eh-frame.ld']" "$1"
}

build_arch() {
    local triple=$1 built
    mkdir -p "dist/$triple"
    # Never leave an older binary standing for an arch that did not build.
    rm -f "dist/$triple/sp_wrapper"
    if [ "$triple" = "$ARMV7" ] && ! armv7_prebuilt; then
        build_armv7 || return 1
    else
        [ "$triple" = "$TARGET" ] || deps_rust "$triple"
        say "building the static release binary ($triple)"
        cargo build --release --locked --target "$triple" --config "$(remap_paths "$triple")" --config "$(shipped_link_flags "$triple")"
    fi
    built="target/$triple/release/sp_wrapper"
    # Install by rename: a daemon still running the old file (tests leave some
    # finishing their delivery) makes a plain cp fail with "Text file busy".
    cp "$built" "dist/$triple/sp_wrapper.new"
    mv -f "dist/$triple/sp_wrapper.new" "dist/$triple/sp_wrapper"
    check_static "dist/$triple/sp_wrapper" "$triple"
    if [ "$triple" = "$TARGET" ]; then
        cp "$built" dist/sp_wrapper.new
        mv -f dist/sp_wrapper.new dist/sp_wrapper
        check_static dist/sp_wrapper "$triple"
    fi
}

# check_static FILE TRIPLE: the right machine, statically linked, a plain
# ET_EXEC with no program interpreter, and under MAX_SIZE.
check_static() {
    local bin=$1 triple=$2 says size deb_arch rpm_arch qemu suites kernel_floor elf_machine
    arch_fields "$triple"
    says=$(file -b "$bin")
    static_fail() {
        echo "build.sh: $bin: $*" >&2
        exit 1
    }
    [[ "$says" == "ELF "??"-bit LSB executable, $elf_machine"* ]] || static_fail "not a $triple executable: $says"
    [[ "$says" == *"statically linked"* ]] || static_fail "not statically linked: $says"
    LC_ALL=C readelf -h "$bin" | grep -Eq 'Type:[[:space:]]+EXEC' || static_fail "not a plain static executable (ET_EXEC)"
    if LC_ALL=C readelf -l "$bin" | grep -q INTERP; then static_fail "has a program interpreter (PT_INTERP)"; fi
    size=$(stat -c %s "$bin")
    [ "$size" -le "$MAX_SIZE" ] || static_fail "$size bytes, over the $MAX_SIZE-byte bound"
    say "$bin: $size bytes ($((size / 1024)) KiB; bound $((MAX_SIZE / 1024)) KiB), static ET_EXEC, no PT_INTERP: $says"
}

# armv7_prebuilt: rustup lists armv7-unknown-linux-musleabihf, so try its
# prebuilt std first (once per run); where its download fails (404 on the
# Rust dist server for this toolchain, seen here), build std from source.
ARMV7_PREBUILT=
armv7_prebuilt() {
    if [ -z "$ARMV7_PREBUILT" ]; then
        ARMV7_PREBUILT=no
        if rustup target list --installed 2>/dev/null | grep -qx "$ARMV7" ||
            rustup target add "$ARMV7" >/dev/null 2>&1; then
            ARMV7_PREBUILT=yes
        else
            say "rustup has no prebuilt std for $ARMV7 here (rustup target add failed): std is built from source"
        fi
    fi
    [ "$ARMV7_PREBUILT" = yes ]
}

# armv7 without rustup's prebuilt std (armv7_prebuilt failed), so
# std is built from its sources (-Zbuild-std; RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept it), linked by rust-lld against Debian's
# musl-dev:armhf (crt objects and libc.a, musl 1.2.3) and LLVM's libunwind,
# which std's unwind crate links on musl and which we compile from rust-src
# with clang (std is built panic=abort, but its backtrace code still links
# the unwinder).
build_armv7() {
    local sysroot src_unwind resource flags f
    sysroot=$(rustc --print sysroot)
    src_unwind="$sysroot/lib/rustlib/src/rust/src/llvm-project/libunwind"
    if [ ! -d "$sysroot/lib/rustlib/src/rust/library/std" ]; then
        SKIP_REASON="no std sources (rustup component add rust-src)"
    elif [ ! -f "$ARMV7_MUSL/libc.a" ]; then
        SKIP_REASON="no musl libc for armhf in $ARMV7_MUSL (dpkg --add-architecture armhf; apt-get install musl-dev:armhf)"
    elif ! command -v clang >/dev/null || ! command -v llvm-ar >/dev/null; then
        SKIP_REASON="no clang/llvm-ar to build libunwind for armv7 (apt-get install clang llvm)"
    elif [ ! -d "$src_unwind/src" ]; then
        SKIP_REASON="rust-src has no llvm-project/libunwind"
    fi
    [ -z "$SKIP_REASON" ] || return 1
    resource=$(clang -print-resource-dir)
    # -ffile-prefix-map: libunwind's assertions name their source files;
    # as rust-src in remap_paths, /rustc/<commit>, not the builder's home.
    flags=(--target=armv7-unknown-linux-musleabihf -march=armv7-a -mfpu=vfpv3-d16 -mfloat-abi=hard
        -O2 -nostdinc -isystem "$resource/include" -isystem /usr/include/arm-linux-musleabihf
        -I "$src_unwind/include" -funwind-tables -fstrict-aliasing -fvisibility=hidden
        -D_LIBUNWIND_DISABLE_VISIBILITY_ANNOTATIONS -D_LIBUNWIND_IS_NATIVE_ONLY
        "-ffile-prefix-map=$sysroot/lib/rustlib/src/rust=/rustc/$(rustc -vV | sed -n 's/^commit-hash: //p')")
    # Built once per set of flags (a change of them, or of the toolchain, rebuilds it).
    if [ ! -f "$ARMV7_UNWIND/libunwind.a" ] || [ "$(cat "$ARMV7_UNWIND/flags" 2>/dev/null)" != "${flags[*]}" ]; then
        say "building LLVM libunwind for $ARMV7 (clang, from rust-src)"
        rm -rf "$ARMV7_UNWIND.tmp" && mkdir -p "$ARMV7_UNWIND.tmp"
        for f in UnwindLevel1.c UnwindLevel1-gcc-ext.c Unwind-sjlj.c; do
            clang "${flags[@]}" -std=c99 -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not compile libunwind's $f for armv7"
        done
        for f in UnwindRegistersRestore.S UnwindRegistersSave.S; do
            clang "${flags[@]}" -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not assemble libunwind's $f for armv7"
        done
        for f in libunwind.cpp Unwind-EHABI.cpp Unwind-seh.cpp; do
            clang++ "${flags[@]}" -std=c++17 -nostdinc++ -fno-exceptions -fno-rtti -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not compile libunwind's $f for armv7"
        done
        [ -z "$SKIP_REASON" ] || return 1
        llvm-ar rcs "$ARMV7_UNWIND.tmp/libunwind.a" "$ARMV7_UNWIND.tmp"/*.o
        printf '%s' "${flags[*]}" >"$ARMV7_UNWIND.tmp/flags"
        rm -rf "$ARMV7_UNWIND" && mv "$ARMV7_UNWIND.tmp" "$ARMV7_UNWIND"
    fi
    say "building the static release binary ($ARMV7, std from source)"
    if ! armv7_cargo build --release --locked --target "$ARMV7" --config "$(remap_paths "$ARMV7")" --config "$(shipped_link_flags "$ARMV7")"; then
        SKIP_REASON="cargo build -Zbuild-std failed (output above)"
        return 1
    fi
}

# cargo with armv7's std-from-source flags (build and test share them).
armv7_cargo() {
    local unwind
    unwind="$PWD/$ARMV7_UNWIND"
    RUSTC_BOOTSTRAP=1 cargo "$@" -Zbuild-std=std,panic_abort \
        --config "target.$ARMV7.rustflags=['-C','link-self-contained=no','-L','native=$ARMV7_MUSL','-L','native=$unwind','-C','link-arg=$ARMV7_MUSL/crt1.o','-C','link-arg=$ARMV7_MUSL/crti.o','-C','link-arg=$ARMV7_MUSL/crtn.o']"
}

# ---------------------------------------------------------------------------
# Proving each binary (docs/packaging.md, "Proving each binary"). The test
# harness runs natively and launches dist/<triple>/sp_wrapper through
# SP_WRAPPER_RUNNER: the row's qemu program for the arches whose suites
# column (packaging/arches.sh) says qemu, the ARM builds; nothing for those
# it says native: i686, which this x86_64 kernel runs itself (its real
# 32-bit system-call ABI, which qemu-i386 would only translate, and the
# seccomp filter's i386 table). The jobs' /bin/sh is the host's: with no
# binfmt_misc entry, qemu-user's execve hands a native executable to the kernel.

# prove_arch TRIPLE: unit tests built for it, the conformance, record,
# delivery, guardian and security suites (root-only tests included), the
# old-kernel suite where the filter has the arch's table, and the after-2038
# check. Prints each suite's time. (The tests of giving up shorten the 60 s
# delivery window with the test-only SP_TEST_DELIVERY_WINDOW_MS, so they run
# everywhere, the old-kernel filter and qemu included.)

prove_arch() {
    local triple=$1 runner='' unit_runner_var faker started
    local deb_arch rpm_arch qemu suites kernel_floor elf_machine
    arch_fields "$triple"
    # libfaketime runs under qemu-user on every arch; the suites only where
    # the table says so.
    faker=$qemu
    [ "$suites" = native ] || runner=$qemu
    local bin="$PWD/dist/$triple/sp_wrapper"
    unit_runner_var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUNNER"
    timed() {
        local what=$1
        shift
        started=$SECONDS
        "$@"
        ARCH_TIMES+=("$(printf '%-32s %-44s %4d s' "$triple" "$what" $((SECONDS - started)))")
    }
    if [ "$triple" = "$ARMV7" ] && ! armv7_prebuilt; then
        say "$triple: unit tests built for it, run under $runner"
        timed "unit tests (std from source, qemu-arm)" armv7_unit_tests
    elif [ "$triple" != "$TARGET" ]; then
        say "$triple: unit tests built for it${runner:+, run under $runner}"
        # (cargo refuses an empty runner variable: set only with a runner)
        timed "unit tests${runner:+ ($runner)}" fail_if_selects_nothing env ${runner:+"$unit_runner_var=$runner"} \
            cargo test --release --locked --target "$triple" --lib
    fi
    if [ "$triple" = "$TARGET" ]; then
        # The host build ran every suite and this very file the conformance
        # suite under the old-kernel filter, above: only the 2040 check is new.
        say "$triple: a job in 2040 (libfaketime in $faker)"
        timed "after 2038 ($faker + libfaketime)" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$faker" \
            cargo test --release --locked --test integration -- --include-ignored --exact arch::a_job_in_2040_is_recorded_with_2040_times
        return 0
    fi
    say "$triple: the conformance, record, delivery, guardian, crash and security suites${runner:+, under $runner}"
    local skip=()
    if [ -n "$runner" ]; then
        # Slow links (36 + 25 + 25 s) with nothing arch-specific in them: the
        # pacing is integer arithmetic on ACK times, TIOCOUTQ the same number
        # on every arch we build.
        say "SKIPPED under $runner: the three *_link_arrive_exact_and_in_order tests (8 KiB/s shallow, 8 and 64 KiB/s deep; 86 s, arch-independent; run by the host build and by the arches packaging/arches.sh runs natively)"
        skip=(--skip _link_arrive_exact_and_in_order)
    fi
    timed "conformance, record, delivery, guardian, crash, security" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$runner" \
        cargo test --release --locked --test integration -- --include-ignored \
        conformance:: record:: delivery:: guardian:: crash:: security:: "${skip[@]}"
    # (The host's own old-kernel run is in run_tests; it returned above.)
    if [ -z "$runner" ]; then
        say "$triple: old-kernel tests ($kernel_floor, $deb_arch table) and the conformance suite under the filter"
        timed "old kernel $kernel_floor ($deb_arch seccomp table)" fail_if_selects_nothing env SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$bin" \
            cargo test --release --locked --test integration -- --include-ignored old_kernel:: conformance::
    else
        say "SKIPPED $triple old-kernel tests (floor: Linux $kernel_floor): the binary runs under qemu-user, which translates its system calls into the host's, so a host seccomp filter cannot play the guest's old kernel (docs/packaging.md)"
    fi
    say "$triple: a job in 2040 (libfaketime in $faker)"
    timed "after 2038 ($faker + libfaketime)" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$faker" \
        cargo test --release --locked --test integration -- --include-ignored --exact arch::a_job_in_2040_is_recorded_with_2040_times
}

# armv7's unit tests: std and the test harness from source, with unwinding
# (the harness catches each test's panic), so the release profile's
# panic=abort is overridden (else cargo builds std both ways and the crates
# see two `core`s), in their own target directory (apart from the shipped
# binary's panic=abort std).
armv7_unit_tests() {
    local unwind
    unwind="$PWD/$ARMV7_UNWIND"
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/armv7-test CARGO_PROFILE_RELEASE_PANIC=unwind \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUNNER=qemu-arm \
        fail_if_selects_nothing cargo test --release --locked --target "$ARMV7" --lib -Zbuild-std=std,panic_unwind \
        --config "target.$ARMV7.rustflags=['-C','link-self-contained=no','-L','native=$ARMV7_MUSL','-L','native=$unwind','-C','link-arg=$ARMV7_MUSL/crt1.o','-C','link-arg=$ARMV7_MUSL/crti.o','-C','link-arg=$ARMV7_MUSL/crtn.o']"
}

ARCH_TIMES=()
# prove_all_arches [ARCH...]: build-all and prove every arch that built, or
# build and prove only the arches named.
prove_all_arches() {
    local triple arch
    if [ $# -eq 0 ]; then
        build_all
    else
        for arch in "$@"; do
            triple=$(triple_of "$arch")
            SKIP_REASON=
            build_arch "$triple" || {
                echo "build.sh: $arch cannot be built here: $SKIP_REASON" >&2
                exit 1
            }
            BUILT_ARCHES+=("$triple")
        done
    fi
    for triple in "${BUILT_ARCHES[@]}"; do
        prove_arch "$triple"
    done
    say "per-arch proofs (times):"
    printf '    %s\n' "${ARCH_TIMES[@]}"
}

# Builds every arch of packaging/arches.sh, in its order; BUILT_ARCHES lists
# those that built. Only armv7 may be skipped, and only with its reason printed.
BUILT_ARCHES=()
build_all() {
    local triple summary=()
    deps_rust_arches
    for triple in $(arch_triples); do
        SKIP_REASON=
        if build_arch "$triple"; then
            BUILT_ARCHES+=("$triple")
            summary+=("$(printf '%-32s %8s bytes  dist/%s/sp_wrapper' "$triple" "$(stat -c %s "dist/$triple/sp_wrapper")" "$triple")")
        else
            say "SKIPPED $triple: $SKIP_REASON"
            summary+=("$(printf '%-32s SKIPPED (%s)' "$triple" "$SKIP_REASON")")
        fi
    done
    say "build-all:"
    printf '    %s\n' "${summary[@]}"
}

# ---------------------------------------------------------------------------
# Reproducible builds (issue 25; docs/packaging.md, "Reproducible builds").
# repro_check: after `package`, build the x86_64 binary and its .deb and .rpm
# a second time from a copy of this checkout at another path, with another
# HOME and CARGO_HOME (a copy of cargo's download cache, unpacked afresh) and
# the same toolchain without rust-src (hard links, lib/rustlib/src left
# out), and compare them with dist/'s byte for byte. The copy is the
# checkout's files as they are (uncommitted changes too) without .git, as a
# source tarball would be: it is given the commit's time as
# SOURCE_DATE_EPOCH, which package.sh reads from git here. On a mismatch the
# copy is kept for diffoscope. `repro_check ARCH...` (./build.sh repro ARCH...)
# does the same for those arches' binaries and packages, built in dist/
# first; not armv7, whose std is built from rust-src.
repro_check() {
    local other clone sysroot rustup_home name epoch status=0 compared=() started=$SECONDS
    # This machine's HOME, which the binaries must not name (the second
    # build, in a subshell, has another).
    local builder_home=$HOME
    local triples=() files=() arch triple
    for arch in "${@:-x86_64}"; do
        triple=$(triple_of "$arch")
        [ "$triple" != "$ARMV7" ] || { echo "build.sh: repro: armv7's std is built from rust-src, which the second build leaves out" >&2; exit 2; }
        triples+=("$triple")
        arch_fields "$triple"
        files+=("$(arch_binary dist "$triple")" "dist/saltpeter-agent_${VERSION}_$deb_arch.deb" "dist/saltpeter-agent-${VERSION}-1.$rpm_arch.rpm")
    done
    epoch=$(git log -1 --format=%ct)
    # Under target/: on the checkout's filesystem, where hard links to the
    # toolchain are likelier to work than on a tmpfs /tmp (else it is copied).
    mkdir -p target
    other=$(mktemp -d "$PWD/target/repro.XXXXXX")
    clone="$other/elsewhere/saltpeter-agent"
    say "reproducibility: a second build in $clone (HOME=$other/home, toolchain without rust-src)"
    mkdir -p "$clone"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' name; do [ ! -e "$name" ] || printf '%s\0' "$name"; done |
        xargs -0 cp -P --parents -t "$clone"
    mkdir -p "$other/home/.cargo/registry"
    cp -r "${CARGO_HOME:-$HOME/.cargo}"/registry/{index,cache} "$other/home/.cargo/registry/"
    sysroot=$(rustc --print sysroot)
    mkdir -p "$other/toolchain/lib"
    for name in "$sysroot"/* "$sysroot"/lib/* "$sysroot"/lib/rustlib/*; do
        case "$name" in
            "$sysroot/lib" | "$sysroot/lib/rustlib" | "$sysroot/lib/rustlib/src" | "$sysroot/share") continue ;;
        esac
        mkdir -p "$(dirname "$other/toolchain/${name#"$sysroot"/}")"
        cp -al "$name" "$other/toolchain/${name#"$sysroot"/}" 2>/dev/null ||
            cp -a "$name" "$other/toolchain/${name#"$sysroot"/}"
    done
    rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
    (
        cd "$clone"
        export HOME="$other/home" CARGO_HOME="$other/home/.cargo" RUSTUP_HOME="$rustup_home" \
            PATH="$other/toolchain/bin:$PATH" SOURCE_DATE_EPOCH="$epoch"
        unset CARGO_TARGET_DIR RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTUP_TOOLCHAIN
        [ ! -d "$(rustc --print sysroot)/lib/rustlib/src" ] || { echo "build.sh: the copied toolchain has rust-src" >&2; exit 1; }
        for triple in "${triples[@]}"; do
            cargo build --release --locked --quiet --target "$triple" \
                --config "$(remap_paths "$triple")" --config "$(shipped_link_flags "$triple")"
            mkdir -p "dist/$triple"
            cp "target/$triple/release/sp_wrapper" "dist/$triple/sp_wrapper"
            [ "$triple" != "$TARGET" ] || cp "target/$triple/release/sp_wrapper" dist/sp_wrapper
        done
        # (Only the arches asked for are built here: package.sh's notes on
        # the others are not news.)
        if ! bash packaging/package.sh "$VERSION" dist dist >/dev/null 2>"$other/package.err"; then
            cat "$other/package.err" >&2
            exit 1
        fi
        grep -v '^package.sh: no binary for ' "$other/package.err" >&2 || true
    )
    for name in "${files[@]}"; do
        if cmp -s "$name" "$clone/$name"; then
            compared+=("$name ($(stat -c %s "$name") B, sha256 $(sha256sum "$name" | cut -c1-16)...)")
        else
            echo "build.sh: FAIL: $name differs from the second build's $clone/$name ($(cmp "$name" "$clone/$name" 2>&1 | head -n1)); diffoscope shows how" >&2
            status=1
        fi
        case "$name" in
            *.deb | *.rpm) ;;
            *)
                if strings -n 6 "$name" | grep -E "$builder_home|$PWD|/registry/src/|/lib/rustlib/src/" >&2; then
                    echo "build.sh: FAIL: $name names the build machine's paths above" >&2
                    status=1
                fi
                ;;
        esac
    done
    if [ $status -ne 0 ]; then
        echo "build.sh: the second build is kept in $other" >&2
        return 1
    fi
    rm -rf "$other"
    say "reproducible: ${#compared[@]} files identical from two checkouts, homes and toolchains ($((SECONDS - started)) s):"
    printf '    %s\n' "${compared[@]}"
}

# ---------------------------------------------------------------------------
# Soak (issue 17): a suite that passes once may still fail on the next fresh
# machine. N rounds of the host's integration suite (every test, root-only
# ones included) and each arch's suites (prove_arch), the even rounds with a
# busy loop per core at the same priority as the tests. Every failure is
# printed with its round, and the run ends with a table and exit 1 if any.

SOAK_HOG_PIDS=()
soak_hog_start() {
    local i
    for i in $(seq "$(nproc)"); do
        ( while :; do :; done ) &
        SOAK_HOG_PIDS+=($!)
    done
}
soak_hog_stop() {
    [ ${#SOAK_HOG_PIDS[@]} -eq 0 ] || kill "${SOAK_HOG_PIDS[@]}" 2>/dev/null || true
    wait "${SOAK_HOG_PIDS[@]}" 2>/dev/null || true
    SOAK_HOG_PIDS=()
}

# The host's part of ./build.sh test: every integration test (root-only and
# old-kernel ones included; arch:: is per arch), then the conformance and
# guardian suites again under the 2.6.32 filter.
soak_host() {
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- \
        --include-ignored --skip arch:: &&
        SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked \
            --test integration -- --include-ignored old_kernel:: conformance:: guardian:: crash::
}

# soak_summary LOG STATUS: "ok, N passed" (summed over the log's test
# binaries) or the names of the failed tests.
soak_summary() {
    if [ "$2" -eq 0 ]; then
        echo "ok, $(grep -o '[0-9]* passed' "$1" | awk '{n += $1} END {print n + 0}') passed"
    else
        echo "FAILED (exit $2): $(grep -E '^test .* FAILED$' "$1" | sed 's/^test //; s/ \.\.\. FAILED$//' | tr '\n' ' ')"
    fi
}

soak() {
    local rounds=${1:-10} round hog started status failures=0 table=() triple log
    case "$rounds" in '' | *[!0-9]*) echo "build.sh: soak N: N must be a number of rounds" >&2; exit 2 ;; esac
    deps
    build
    export SP_TEST_PYTHON="$PWD/$PYTHON"
    cargo test --release --locked --test integration --no-run
    build_all
    mkdir -p target/soak
    trap 'soak_hog_stop' EXIT
    for round in $(seq "$rounds"); do
        hog=no
        if [ $((round % 2)) -eq 0 ]; then
            hog="yes ($(nproc) busy loops)"
            soak_hog_start
        fi
        say "soak round $round/$rounds, CPU hog: $hog"
        started=$SECONDS
        log="target/soak/round$round-host.log"
        status=0
        # (In the background, waited for: `set -e` holds inside it, which
        # it would not on the left of `||`.)
        soak_host >"$log" 2>&1 &
        wait $! || status=$?
        table+=("$(printf 'round %2d  hog %-3s  %-32s %4d s  %s' "$round" "${hog%% *}" host $((SECONDS - started)) "$(soak_summary "$log" $status)")")
        if [ $status -ne 0 ]; then
            failures=$((failures + 1))
            say "round $round host suite FAILED (log: $log)"
            sed -n '/^failures:$/,/^test result/p' "$log" | tail -n 80
        fi
        for triple in "${BUILT_ARCHES[@]}"; do
            [ "$triple" = "$TARGET" ] && continue
            started=$SECONDS
            log="target/soak/round$round-$triple.log"
            status=0
            ARCH_TIMES=()
            prove_arch "$triple" >"$log" 2>&1 &
            wait $! || status=$?
            table+=("$(printf 'round %2d  hog %-3s  %-32s %4d s  %s' "$round" "${hog%% *}" "$triple" $((SECONDS - started)) "$(soak_summary "$log" $status)")")
            if [ $status -ne 0 ]; then
                failures=$((failures + 1))
                say "round $round $triple FAILED (log: $log)"
                sed -n '/^failures:$/,/^test result/p' "$log" | tail -n 80
            fi
        done
        soak_hog_stop
        printf '    %s\n' "${table[@]}" | grep "^    round *$round " || true
    done
    trap - EXIT
    say "soak: $rounds rounds, $failures failed suite runs, $((SECONDS / 60)) min $((SECONDS % 60)) s"
    printf '    %s\n' "${table[@]}"
    [ "$failures" -eq 0 ]
}

build_local() {
    cargo build --release --locked
    mkdir -p dist
    cp target/release/sp_wrapper dist/sp_wrapper-local.new
    mv -f dist/sp_wrapper-local.new dist/sp_wrapper-local
    say "dist/sp_wrapper-local"
}

# step NAME: close the step that ran since the last call (its time goes to
# STEP_TIMES, printed at the end of the test), and name the next.
STEP_TIMES=()
STEP_NAME=
STEP_START=0
step() {
    [ -z "$STEP_NAME" ] || STEP_TIMES+=("$(printf '%-44s %5d s' "$STEP_NAME" $((SECONDS - STEP_START)))")
    STEP_NAME=$1
    STEP_START=$SECONDS
    [ -z "$1" ] || say "$1"
}

run_tests() {
    step "dependencies and the x86_64 build"
    deps
    build
    step "format and lint (rustfmt, clippy, shellcheck)"
    cargo fmt --all -- --check
    cargo clippy --locked --all-targets -- -D warnings
    lint_shell
    export SP_TEST_PYTHON="$PWD/$PYTHON"
    step "unit, integration and conformance tests (host build)"
    cargo test --release --locked
    # Tests that need root are #[ignore]d with their reason, so a plain
    # `cargo test` as a user reports them as ignored, never as passed. CI
    # runs as root: run them here, where they fail if they cannot run.
    step "tests that need root (SP_USER; a reused pid of the job, through ns_last_pid; a 1 MiB tmpfs)"
    fail_if_selects_nothing cargo test --release --locked --test integration -- --ignored security:: guardian:: bounded::
    step "dead DNS: the machine id's host-name lookups bounded (root: namespaces; the shipped static binary, musl's resolver)"
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --ignored dead_dns::
    file dist/sp_wrapper | grep -q 'statically linked' || { echo "build.sh: dist/sp_wrapper is not statically linked" >&2; exit 1; }
    # The host build above is linked with glibc, which has NSS: only the
    # static musl file can show that directory users reach it through getent.
    step "directory users (SP_USER known only to NSS, libnss-extrausers), static binary"
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --include-ignored --exact \
        security::sp_user_known_only_to_nss_runs_with_its_directory_ids_and_groups
    step "old-kernel tests: the conformance, guardian and crash suites again, static binary under a seccomp filter (syscalls after 2.6.32 -> ENOSYS)"
    SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --include-ignored old_kernel:: conformance:: guardian:: crash::
    step "every arch: build-all, then each binary proven (under qemu-user where it is not native)"
    prove_all_arches
    step "packages: build, lint, contents, each arch's binary against the real endpoint, log rotation"
    package
    bash tests/packaging/check.sh "$VERSION" dist
    step "reproducible: x86_64 binary, .deb and .rpm built again elsewhere, compared byte for byte"
    repro_check
    step "Salt $SALT_E2E (the e2e venv), $SALT_LTS and $SALT_OLD: the machine id against Salt's own, and old Salt launching the agent"
    deps_e2e
    salt_id_suite
    old_salt_suite
    step "end-to-end: salt-master, salt-minion, the Saltpeter server"
    e2e_suite
    step ""
    say "./build.sh test passed in $((SECONDS / 60)) min $((SECONDS % 60)) s; by step:"
    printf '    %s\n' "${STEP_TIMES[@]}"
}

demo() {
    deps_endpoint
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

# Runs pytest in the background so a TERM/INT/HUP to this script reaches it:
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
# from build-all. Arches not built are skipped, each named with the command
# that builds it: `./build.sh build-all && ./build.sh package` makes them all.
package() {
    deps_packaging
    build
    rm -f dist/saltpeter-agent_*.deb dist/saltpeter-agent-*.rpm
    bash packaging/package.sh "$VERSION" dist dist
    say "packages (copy these, not dist/ itself, to a repository or the Salt file server; docs/deploy.md):"
    printf '    %s\n' dist/saltpeter-agent_*.deb dist/saltpeter-agent-*.rpm
}

case "${1:-build}" in
    build)
        if [ -n "${2:-}" ]; then
            SKIP_REASON=
            build_arch "$(triple_of "$2")" || {
                echo "build.sh: $2 cannot be built here: $SKIP_REASON" >&2
                exit 1
            }
        else
            build
        fi
        ;;
    build-all) build_all ;;
    test-arches)
        # The per-arch part of ./build.sh test alone (after ./build.sh deps).
        export SP_TEST_PYTHON="$PWD/$PYTHON"
        shift
        prove_all_arches "$@"
        ;;
    build-local) build_local ;;
    test) run_tests ;;
    deps) deps ;;
    demo) demo ;;
    bench) bench ;;
    soak) soak "${2:-10}" ;;
    package) package ;;
    repro)
        # After build-all for other arches than x86_64.
        package
        shift
        repro_check "$@"
        ;;
    e2e) e2e ;;
    e2e-bench) deps; build; e2e_bench ;;
    salt-id) build; salt_id_suite ;;
    old-salt) deps_endpoint; build; old_salt_suite ;;
    shellcheck) deps_shellcheck; lint_shell ;;
    clean) cargo clean; rm -rf dist ;;
    *)
        echo "usage: ./build.sh [build [ARCH]|build-all|test-arches [ARCH...]|build-local|test|deps|demo|soak [N]|bench|package|repro [ARCH...]|e2e|e2e-bench|salt-id|old-salt|shellcheck|clean]" >&2
        echo "       ARCH: $(arch_triples | sed 's/-.*//' | paste -sd '|'), or its Debian name or triple (packaging/arches.sh)" >&2
        exit 2
        ;;
esac
