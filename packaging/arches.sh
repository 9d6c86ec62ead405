# shellcheck shell=bash
# packaging/arches.sh: the one table of architectures we package, and how to
# run a binary of each on this host. Sourced by packaging/package.sh and
# tests/packaging/check.sh; defines variables and functions only.
#
# Each row: Rust target triple, Debian architecture, RPM architecture, the
# qemu-user program that runs it on another host, and what `file` says about
# a binary for it (to refuse a binary built for the wrong target).

# triple                          deb    rpm      qemu          file(1) says
PACKAGING_ARCHES=(
    "x86_64-unknown-linux-musl      amd64  x86_64   qemu-x86_64   x86-64"
    "aarch64-unknown-linux-musl     arm64  aarch64  qemu-aarch64  ARM aarch64"
    "i686-unknown-linux-musl        i386   i686     qemu-i386     Intel 80386"
    "armv7-unknown-linux-musleabihf armhf  armv7hl  qemu-arm      ARM, EABI5"
)

# arch_fields TRIPLE: sets deb_arch, rpm_arch, qemu, elf_machine (returns 1
# for an unknown triple). They are this function's outputs, for the caller.
# shellcheck disable=SC2034
arch_fields() {
    local row triple rest
    for row in "${PACKAGING_ARCHES[@]}"; do
        read -r triple deb_arch rpm_arch qemu rest <<<"$row"
        if [ "$triple" = "$1" ]; then
            elf_machine=$rest
            return 0
        fi
    done
    return 1
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
