# shellcheck shell=bash
# packaging/arches.sh: the one table of architectures we build, prove and
# package, and how to run a binary of each on this host. Sourced by
# build.sh (.ci/lib.sh), packaging/package.sh and tests/packaging/check.sh;
# defines variables and functions only. A new arch is one row here, plus
# what is truly its own: a kernel floor the old-kernel filter cannot play
# (the floor column says it), a toolchain that rustup lacks (armv7's std
# from rust-src in .ci/binaries.sh), and the Salt state's grains
# (tests/packaging/salt_state_test.py, docs/deploy.md).
#
# Each row: Rust target triple (its first word, x86_64, is the arch's short
# name for ./build.sh build ARCH), Debian architecture, RPM architecture, the
# qemu-user program that runs it on another host, how build.sh's integration
# suites run it on an x86_64 host (native: the kernel itself, for i686 its
# real 32-bit system-call ABI and the seccomp filter's i386 table; qemu: under
# the qemu column's program), the oldest Linux it runs on (x86_64 and i686:
# 2.6.32; arm64 came in 3.7; armhf's oldest distributions, Debian 7 and the
# 2012 Raspbian, ship 3.2), and what `file` says about a binary for it (to
# refuse a binary built for the wrong target).

# triple                          deb    rpm      qemu          suites  floor   file(1) says
PACKAGING_ARCHES=(
    "x86_64-unknown-linux-musl      amd64  x86_64   qemu-x86_64   native  2.6.32  x86-64"
    "aarch64-unknown-linux-musl     arm64  aarch64  qemu-aarch64  qemu    3.7     ARM aarch64"
    "i686-unknown-linux-musl        i386   i686     qemu-i386     native  2.6.32  Intel 80386"
    "armv7-unknown-linux-musleabihf armhf  armv7hl  qemu-arm      qemu    3.2     ARM, EABI5"
)

# arch_fields TRIPLE: sets deb_arch, rpm_arch, qemu, suites, kernel_floor,
# elf_machine (returns 1 for an unknown triple). They are this function's
# outputs, for the caller (which may declare them local first).
# shellcheck disable=SC2034 # read by the callers, not here
arch_fields() {
    local row triple rest
    for row in "${PACKAGING_ARCHES[@]}"; do
        read -r triple deb_arch rpm_arch qemu suites kernel_floor rest <<<"$row"
        if [ "$triple" = "$1" ]; then
            elf_machine=$rest
            return 0
        fi
    done
    return 1
}

# arch_triples: every triple of the table, in its order, one a line.
arch_triples() {
    local row
    for row in "${PACKAGING_ARCHES[@]}"; do
        echo "${row%% *}"
    done
}

# arch_binary DISTDIR TRIPLE: the binary the arch helper's layout puts there
# (dist/sp_wrapper for x86_64, as ./build.sh build makes it; otherwise
# dist/<triple>/sp_wrapper), or nothing when that arch was not built.
arch_binary() {
    local dist=$1 triple=$2
    if [ "$triple" = x86_64-unknown-linux-musl ] && [ -f "$dist/sp_wrapper" ]; then
        echo "$dist/sp_wrapper"
    elif [ -f "$dist/$triple/sp_wrapper" ]; then
        echo "$dist/$triple/sp_wrapper"
    fi
}

# arch_runner TRIPLE: the command prefix that runs a binary of TRIPLE here:
# nothing on the native machine, else qemu-user. Fails when qemu is missing.
arch_runner() {
    arch_fields "$1" || return 1
    local native
    case "$(uname -m)" in
        x86_64) native=x86_64-unknown-linux-musl ;;
        aarch64) native=aarch64-unknown-linux-musl ;;
        i?86) native=i686-unknown-linux-musl ;;
        armv7l) native=armv7-unknown-linux-musleabihf ;;
        *) native= ;;
    esac
    # An x86_64 kernel runs i386 binaries itself (IA32 emulation), but
    # qemu-i386 proves the binary needs nothing from a 64-bit kernel.
    if [ "$1" = "$native" ]; then
        return 0
    fi
    command -v "$qemu" >/dev/null || {
        echo "$qemu is missing: apt-get install qemu-user (Debian) to run $1 binaries here" >&2
        return 1
    }
    echo "$qemu"
}
