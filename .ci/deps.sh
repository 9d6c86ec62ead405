# shellcheck shell=bash
# .ci/deps.sh: `./build.sh deps`, what the builds, the tests and the packages
# need installed: the Rust targets and armv7's toolchain, qemu-user and the
# tools of the per-arch proofs, .venv (the real endpoint and the Python
# reference wrapper), the packaging tools, libnss-extrausers and shellcheck.
# (The e2e suite's Salt and Saltpeter server are installed by e2e.sh, the
# machine-id test's Salts by salt.sh: only those suites need them.)

# .venv's pins: the real endpoint and websockets (deps_endpoint).
ENDPOINT_PINS=('saltpeter==0.9.32' 'websockets==17.4')

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
    # shellcheck disable=SC2034 # arch_fields' outputs, local to this function; not all are read
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

deps() {
    deps_rust
    deps_arches
    deps_python
    deps_packaging
    deps_nss
    deps_shellcheck
}
