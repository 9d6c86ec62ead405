#!/usr/bin/env bash
# packaging/package.sh: build a .deb and an .rpm of sp_wrapper for every
# architecture whose binary is in DISTDIR (./build.sh package calls this).
#
#   packaging/package.sh VERSION DISTDIR OUTDIR
#
# Binaries (the layout ./build.sh build and build-all make):
#   DISTDIR/sp_wrapper            x86_64      -> amd64 .deb, x86_64 .rpm
#   DISTDIR/<triple>/sp_wrapper   any arch of packaging/arches.sh
# An arch with no binary is skipped with a note; none at all is an error.
#
# Writes OUTDIR/saltpeter-agent_<VERSION>_<deb arch>.deb and
# OUTDIR/saltpeter-agent-<VERSION>-1.<rpm arch>.rpm. Both formats install:
#   /usr/bin/sp_wrapper                       the static binary, as built
#   /usr/libexec/saltpeter-agent/reopen-logs  SIGHUP to the daemons (logrotate)
#   /etc/logrotate.d/saltpeter-agent          conffile / %config(noreplace)
#   /usr/share/man/man1/sp_wrapper.1.gz       help2man on this binary's --help
#   /var/log/sp_wrapper/                      0750, the default log directory
#   /usr/share/doc/saltpeter-agent/           README.md, docs/*.md
# plus, in the .deb, Debian's copyright (DEP-5), changelog.gz and lintian
# overrides, and in the .rpm, %license LICENSE and a %changelog made from the
# same packaging/changelog. The binary is static: the only relation is to
# logrotate (deb Recommends, rpm Requires). One maintainer script, the
# .deb's postinst (packaging/postinst): /var/log/sp_wrapper gets 0750 also
# when it existed before (dpkg leaves an existing directory's mode alone;
# rpm does not). docs/packaging.md explains each choice.
#
# SP_PACKAGE_CHANGELOG=FILE: the changelog to use instead of
# packaging/changelog (its top entry must still be VERSION). Only for test
# packages of another version (tests/e2e/test_deploy.py builds an N+1 this
# way); a release uses packaging/changelog. Each binary must say VERSION in
# its --version, so a package never carries a binary of another version.
#
# Tools (./build.sh deps installs them on Debian): dpkg-deb, rpmbuild (the
# rpm package), help2man, file, and qemu-user for binaries of other arches
# (help2man runs each package's own binary).
set -euo pipefail
# Modes of everything staged, and of the directories install -D makes, must
# not depend on the caller's umask (the packages are reproducible).
umask 022

die() { echo "package.sh: $*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: packaging/package.sh VERSION DISTDIR OUTDIR"
version=$1
# One version string valid for both formats: rpm's Version may not contain
# '-' (it separates the release), Debian's must start with a digit.
[[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "version '$version' is not usable for both .deb and .rpm (digits, letters, . + ~; no -)"
distdir=$(realpath "$2") || die "$2 not found: run ./build.sh first"
outdir=$(realpath -m "$3")
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
# shellcheck source=packaging/arches.sh
. "$here/arches.sh"
for tool in dpkg-deb rpmbuild help2man file gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing: run ./build.sh deps (it installs dpkg-dev, rpm, help2man, file, qemu-user from Debian)"
done

# The changelog's top entry is the release we package: refuse a mismatch,
# so a release never goes out with last release's notes.
changelog=${SP_PACKAGE_CHANGELOG:-$here/changelog}
read -r _ top_version _ <"$changelog"
[ "$top_version" = "($version)" ] || die "$changelog starts with $top_version, not ($version): add an entry for $version"
# Reproducible packages (docs/packaging.md, "Reproducible builds"): every
# date inside is SOURCE_DATE_EPOCH: as given (.ci/package.sh's repro_check
# passes the commit's time), else the time of the checkout's last commit, else (a
# source tree without git) the date of the changelog's top entry.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$top" log -1 --format=%ct 2>/dev/null) || SOURCE_DATE_EPOCH=
fi
if [ -z "$SOURCE_DATE_EPOCH" ]; then
    changelog_date=$(sed -n '/^ -- /{ s/^ -- .*>  //p; q; }' "$changelog")
    SOURCE_DATE_EPOCH=$(date -d "$changelog_date" +%s) || die "$changelog: bad date '$changelog_date'"
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH '$SOURCE_DATE_EPOCH' is not a number of seconds"
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$outdir"

summary="Saltpeter job agent (sp_wrapper)"
description="sp_wrapper runs a Saltpeter (distributed cron) job on a Salt minion and
reports it to the Saltpeter server over a WebSocket: output, heartbeats, exit
code, kills and timeouts, overlap locks. A drop-in replacement for the Python
wrapper: point Saltpeter's wrapper_path at /usr/bin/sp_wrapper. One static
binary with no dependencies, for old kernels too (2.6.32 on x86)."

# rpm's %changelog from packaging/changelog (Debian's format), so the two
# packages cannot tell different histories.
rpm_changelog() {
    local line entry_version="" items=()
    while IFS= read -r line; do
        case $line in
            "saltpeter-agent ("*)
                entry_version=${line#*(}
                entry_version=${entry_version%%)*}
                items=()
                ;;
            "  * "*) items+=("- ${line#  \* }") ;;
            "    "*) items[-1]+=" ${line#    }" ;;
            " -- "*)
                local who=${line#' -- '} when
                when=$(LC_ALL=C date -u -d "${who#*>  }" '+%a %b %d %Y')
                printf '* %s %s - %s-1\n' "$when" "${who%%>*}>" "$entry_version"
                printf '%s\n' "${items[@]}"
                echo
                ;;
        esac
    done <"$changelog"
}

# man page: help2man on the binary being packaged (under qemu for another
# arch), so sp_wrapper(1) is --help and --version, never a copy that drifts.
make_manpage() {
    local binary=$1 runner=$2 out=$3 exe="$work/help2man/sp_wrapper"
    mkdir -p "$work/help2man"
    printf '#!/bin/sh\nexec %s "%s" "$@"\n' "$runner" "$binary" >"$exe"
    chmod 0755 "$exe"
    help2man --no-info --section=1 --source="saltpeter-agent $version" \
        --name="run one Saltpeter job and report it to the server" \
        --include="$here/sp_wrapper.h2m" --output="$work/sp_wrapper.1" "$exe" ||
        die "help2man could not run $binary --help"
    gzip -9n <"$work/sp_wrapper.1" >"$out"
}

# The file tree both formats install, with its modes (umask-independent).
stage() {
    local root=$1 binary=$2 runner=$3
    install -D -m 0755 "$binary" "$root/usr/bin/sp_wrapper"
    install -D -m 0755 "$here/reopen-logs" "$root/usr/libexec/saltpeter-agent/reopen-logs"
    install -D -m 0644 "$here/logrotate" "$root/etc/logrotate.d/saltpeter-agent"
    install -d -m 0755 "$root/usr/share/man/man1"
    make_manpage "$binary" "$runner" "$root/usr/share/man/man1/sp_wrapper.1.gz"
    chmod 0644 "$root/usr/share/man/man1/sp_wrapper.1.gz"
    install -d -m 0750 "$root/var/log/sp_wrapper"
    install -d -m 0755 "$root/usr/share/doc/saltpeter-agent"
    install -m 0644 "$top/README.md" "$top"/docs/*.md "$root/usr/share/doc/saltpeter-agent/"
}

# Debian's machine-readable copyright (DEP-5). The MIT text of LICENSE is
# the license DEP-5 calls Expat.
debian_copyright() {
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: saltpeter-agent"
    linked_components_comment
    cat <<FILES

Files: *
Copyright: $(sed -n 's/^Copyright (c) //p' "$top/LICENSE")
License: Expat

License: Expat
FILES
    sed -n '/^Permission/,$p' "$top/LICENSE" | sed 's/^$/./; s/^/ /'
}

# A Comment field naming what the static binary contains besides our code:
# Rust's std, musl, and every crate linked in (normal dependencies, not
# proc-macros, which only run at build time), from Cargo.lock via cargo
# metadata (offline: the build already fetched them).
linked_components_comment() {
    (cd "$top" && cargo metadata --format-version 1 --locked --offline \
        --filter-platform x86_64-unknown-linux-musl 2>/dev/null) |
        python3 -c '
import json, sys, textwrap
meta = json.load(sys.stdin)
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
packages = {p["id"]: p for p in meta["packages"]}
proc_macro = lambda p: any("proc-macro" in t["kind"] for t in p["targets"])
seen, todo = set(), [meta["resolve"]["root"]]
while todo:
    for dep in nodes[todo.pop()]["deps"]:
        normal = any(k["kind"] is None for k in dep["dep_kinds"])
        if normal and dep["pkg"] not in seen and not proc_macro(packages[dep["pkg"]]):
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
crates = "; ".join(sorted("%s %s (%s)" % (packages[i]["name"], packages[i]["version"], packages[i]["license"]) for i in seen))
text = ("/usr/bin/sp_wrapper is statically linked. Besides this package'"'"'s own code "
        "it contains the Rust standard library (MIT or Apache-2.0), musl libc (Expat) "
        "and these crates: " + crates + ".")
lines = textwrap.wrap(text, 72, break_on_hyphens=False)
print("Comment: " + lines[0])
for line in lines[1:]:
    print(" " + line)
' || echo "Comment: /usr/bin/sp_wrapper is statically linked: see Cargo.lock for what it contains."
}

build_deb() {
    local binary=$1 runner=$2 deb_arch=$3 root="$work/deb-$3"
    stage "$root" "$binary" "$runner"
    local doc="$root/usr/share/doc/saltpeter-agent"
    debian_copyright >"$doc/copyright"
    # A native package (no Debian revision): Policy 12.7 names it changelog.gz.
    gzip -9n <"$changelog" >"$doc/changelog.gz"
    chmod 0644 "$doc/copyright" "$doc/changelog.gz"
    install -D -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/saltpeter-agent"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    # As dpkg-gencontrol counts it: each file's KiB rounded up, 1 per
    # directory. (du would add the directories' own sizes, which depend on
    # the filesystem the package is staged on.)
    local installed_kib
    installed_kib=$(find "$root" \( -type f -printf '%s\n' \) -o -printf '1024\n' |
        awk '{ kib += int(($1 + 1023) / 1024) } END { print kib }')
    mkdir -p "$root/DEBIAN"
    echo /etc/logrotate.d/saltpeter-agent >"$root/DEBIAN/conffiles"
    install -m 0755 "$here/postinst" "$root/DEBIAN/postinst"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
        xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    cat >"$root/DEBIAN/control" <<CONTROL
Package: saltpeter-agent
Version: $version
Architecture: $deb_arch
Maintainer: $maintainer
Section: admin
Priority: optional
Installed-Size: $installed_kib
Recommends: logrotate
Description: $summary
 ${description//$'\n'/$'\n' }
CONTROL
    chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
    local deb="$outdir/saltpeter-agent_${version}_${deb_arch}.deb"
    # xz: read by every dpkg since 1.15.6 (Debian 6, Ubuntu 10.04). One
    # thread: dpkg-deb's multi-threaded xz (used with 2 or more cores) lays
    # the stream out differently, so the file would depend on the builder's
    # core count. dpkg-deb clamps every mtime to SOURCE_DATE_EPOCH and sorts
    # the members.
    dpkg-deb -Zxz --threads-max=1 --build --root-owner-group "$root" "$deb" >/dev/null
    echo "built $deb ($(stat -c %s "$deb") bytes)"
}

build_rpm() {
    local binary=$1 runner=$2 rpm_arch=$3 root="$work/rpmstage-$3" top_rpm="$work/rpm-$3"
    stage "$root" "$binary" "$runner"
    install -D -m 0644 "$top/LICENSE" "$root/usr/share/licenses/saltpeter-agent/LICENSE"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    mkdir -p "$top_rpm/SPECS"
    cat >"$top_rpm/SPECS/saltpeter-agent.spec" <<SPEC
Name:           saltpeter-agent
Version:        $version
Release:        1
Summary:        $summary
License:        MIT
Group:          System Environment/Daemons
URL:            https://pypi.org/project/saltpeter/
Packager:       $maintainer
# A static binary: no automatic library dependencies. logrotate reads
# /etc/logrotate.d (in every RHEL/CentOS/Fedora base install anyway).
AutoReqProv:    no
Requires:       logrotate
# Ship the binary exactly as built: no debuginfo split, no strip, no brp-*
# scripts (some are missing on Debian, and the binary is stripped already).
%global debug_package %{nil}
%global __os_install_post %{nil}
%global __strip /bin/true
%global _build_id_links none

%description
$description

%prep
%build

%install
mkdir -p %{buildroot}
cp -a $root/. %{buildroot}/

%files
%defattr(-,root,root,-)
%attr(0755,root,root) /usr/bin/sp_wrapper
%dir /usr/libexec/saltpeter-agent
%attr(0755,root,root) /usr/libexec/saltpeter-agent/reopen-logs
%config(noreplace) %attr(0644,root,root) /etc/logrotate.d/saltpeter-agent
%doc %attr(0644,root,root) /usr/share/man/man1/sp_wrapper.1.gz
%dir %attr(0750,root,root) /var/log/sp_wrapper
%dir /usr/share/doc/saltpeter-agent
%doc /usr/share/doc/saltpeter-agent/*
%dir /usr/share/licenses/saltpeter-agent
%license /usr/share/licenses/saltpeter-agent/LICENSE

%changelog
$(rpm_changelog)
SPEC
    # gzip payload and SHA-256 file digests: what rpm 4.8 (CentOS 6) reads.
    # (Newer rpmbuilds default to zstd, which rpm before 4.14 cannot unpack.)
    # --target: build for rpm_arch on any host (nothing is compiled here).
    # The build time and host are fixed too, so rebuilds are identical.
    rpmbuild -bb --quiet --target "$rpm_arch-linux" \
        --define "_topdir $top_rpm" \
        --define "_binary_payload w9.gzdio" \
        --define "_binary_filedigest_algorithm 8" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        --define "_buildhost reproducible" \
        --define "source_date_epoch_from_changelog 0" \
        "$top_rpm/SPECS/saltpeter-agent.spec" >/dev/null ||
        die "rpmbuild failed for $rpm_arch"
    local rpm_file="$outdir/saltpeter-agent-${version}-1.${rpm_arch}.rpm"
    cp "$top_rpm/RPMS/$rpm_arch/saltpeter-agent-${version}-1.${rpm_arch}.rpm" "$rpm_file"
    echo "built $rpm_file ($(stat -c %s "$rpm_file") bytes)"
}

# Override for a real release: who answers for these packages.
maintainer=${SP_PACKAGE_MAINTAINER:-$(sed -n '/^ -- /{ s/^ -- \(.*>\)  .*/\1/p; q; }' "$changelog")}

built=0
missing=()
for row in "${PACKAGING_ARCHES[@]}"; do
    read -r triple _ <<<"$row"
    arch_fields "$triple"
    binary=$(arch_binary "$distdir" "$triple")
    if [ -z "$binary" ]; then
        echo "package.sh: no binary for $triple in $distdir ($triple/sp_wrapper): skipping $deb_arch/$rpm_arch (./build.sh build $deb_arch, or ./build.sh build-all, makes it)" >&2
        missing+=("$deb_arch/$rpm_arch")
        continue
    fi
    # Refuse a binary of the wrong machine or a dynamic one: the package's
    # arch field must be true.
    described=$(file -b "$binary")
    [[ $described == *"$elf_machine"* ]] || die "$binary is not a $elf_machine binary ($triple): file says: $described"
    [[ $described == *"statically linked"* ]] || die "$binary is not statically linked: file says: $described"
    runner=$(arch_runner "$triple") || die "cannot run $binary here to make its man page"
    says=$($runner "$binary" --version) || die "$binary --version failed"
    [ "$says" = "sp_wrapper $version" ] || die "$binary says '$says', not 'sp_wrapper $version': it is not the binary of $version"
    build_deb "$binary" "$runner" "$deb_arch"
    build_rpm "$binary" "$runner" "$rpm_arch"
    built=$((built + 1))
done
[ "$built" -gt 0 ] || die "no binary found in $distdir: run ./build.sh build (or build-all)"
if [ ${#missing[@]} -gt 0 ]; then
    echo "package.sh: packaged $built of ${#PACKAGING_ARCHES[@]} arches; not ${missing[*]}: run ./build.sh build-all, then ./build.sh package again, for every arch's package" >&2
fi
