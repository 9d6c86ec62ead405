#!/usr/bin/env bash
# Build the .deb and the .rpm of sp_wrapper (./build.sh package calls this).
#
#   tests/packaging/package.sh VERSION BINARY OUTDIR
#
# Writes OUTDIR/saltpeter-agent_<VERSION>_amd64.deb and
# OUTDIR/saltpeter-agent-<VERSION>-1.x86_64.rpm. Both install:
#   /usr/bin/sp_wrapper                 0755 root:root (the static binary)
#   /var/log/sp_wrapper/                0750 root:root (the default log directory)
#   /usr/share/doc/saltpeter-agent/     README.md, LICENSE, docs/*.md
# and nothing under /usr/local (docs/packaging.md says why). No dependencies
# (the binary is static), no maintainer scripts.
#
# Tools: dpkg-deb (Debian's dpkg), rpmbuild (Debian's `rpm` package,
# installed here with apt-get when missing). Run from anywhere; paths are
# taken relative to the current directory.
set -euo pipefail

die() { echo "package.sh: $*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: tests/packaging/package.sh VERSION BINARY OUTDIR"
version=$1
# One version string valid for both formats: rpm's Version may not contain
# '-' (it separates the release), Debian's must start with a digit.
[[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "version '$version' is not usable for both .deb and .rpm (digits, letters, . + ~; no -)"
[ -f "$2" ] || die "binary $2 not found: run ./build.sh first"
binary=$(realpath "$2")
outdir=$(realpath -m "$3")
top=$(cd "$(dirname "$0")/../.." && pwd)
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing: this script runs on Debian or Ubuntu (apt-get install dpkg)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$outdir"

summary="Saltpeter job agent (sp_wrapper)"
description="sp_wrapper runs a Saltpeter (distributed cron) job on a Salt minion and
reports it to the Saltpeter server over a WebSocket: output, heartbeats, exit
code, kills and timeouts, overlap locks. A drop-in replacement for the Python
wrapper: point Saltpeter's wrapper_path at /usr/bin/sp_wrapper. One static
x86_64 binary with no dependencies; runs on Linux 2.6.32 and later."

# The file tree both packages install, with its modes. umask-independent.
stage() {
    local root=$1
    install -D -m 0755 "$binary" "$root/usr/bin/sp_wrapper"
    install -d -m 0750 "$root/var/log/sp_wrapper"
    install -d -m 0755 "$root/usr/share/doc/saltpeter-agent"
    install -m 0644 "$top/README.md" "$top/LICENSE" "$top"/docs/*.md \
        "$root/usr/share/doc/saltpeter-agent/"
}

# --- .deb -------------------------------------------------------------------
deb_root="$work/deb"
stage "$deb_root"
# Debian policy wants the license at /usr/share/doc/<package>/copyright.
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: saltpeter-agent"
    echo
    echo "Files: *"
    echo "License: MIT"
    sed 's/^$/./; s/^/ /' "$top/LICENSE"
} > "$deb_root/usr/share/doc/saltpeter-agent/copyright"
chmod 0644 "$deb_root/usr/share/doc/saltpeter-agent/copyright"
installed_kib=$(du -sk --apparent-size "$deb_root" | cut -f1)
mkdir -p "$deb_root/DEBIAN"
cat > "$deb_root/DEBIAN/control" <<CONTROL
Package: saltpeter-agent
Version: $version
Architecture: amd64
Maintainer: saltpeter-agent maintainers <saltpeter-agent@localhost>
Section: admin
Priority: optional
Installed-Size: $installed_kib
Description: $summary
$(sed 's/^/ /' <<<"$description")
CONTROL
deb="$outdir/saltpeter-agent_${version}_amd64.deb"
# xz: read by every dpkg since 1.15.6 (Debian 6, Ubuntu 10.04).
dpkg-deb -Zxz --build --root-owner-group "$deb_root" "$deb" >/dev/null
echo "built $deb"

# --- .rpm -------------------------------------------------------------------
if ! command -v rpmbuild >/dev/null; then
    echo "package.sh: rpmbuild is missing; installing Debian's rpm package" >&2
    if ! apt-get install -y -q rpm >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q rpm >/dev/null 2>&1 || die "cannot install rpmbuild. As root with network access run
    apt-get update && apt-get install -y rpm     (Debian/Ubuntu)
or  dnf install -y rpm-build                    (Fedora/RHEL)
then run this script again. The .deb above is already built."
    fi
    command -v rpmbuild >/dev/null || die "the rpm package installed no rpmbuild"
fi
rpm_stage="$work/rpmstage"
stage "$rpm_stage"
mkdir -p "$work/rpm/SPECS"
cat > "$work/rpm/SPECS/saltpeter-agent.spec" <<SPEC
Name:           saltpeter-agent
Version:        $version
Release:        1
Summary:        $summary
License:        MIT
BuildArch:      x86_64
# A static binary: no automatic library dependencies, none declared.
AutoReqProv:    no
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
cp -a $rpm_stage/. %{buildroot}/

%files
%defattr(-,root,root,-)
%attr(0755,root,root) /usr/bin/sp_wrapper
%dir %attr(0750,root,root) /var/log/sp_wrapper
%dir /usr/share/doc/saltpeter-agent
%doc /usr/share/doc/saltpeter-agent/*
SPEC
# gzip payload and SHA-256 file digests: what rpm 4.8 (CentOS 6) reads.
# (Newer rpmbuilds default to zstd, which rpm before 4.14 cannot unpack.)
rpmbuild -bb --quiet \
    --define "_topdir $work/rpm" \
    --define "_binary_payload w9.gzdio" \
    --define "_binary_filedigest_algorithm 8" \
    "$work/rpm/SPECS/saltpeter-agent.spec" >/dev/null
rpm_file="$outdir/saltpeter-agent-${version}-1.x86_64.rpm"
cp "$work/rpm/RPMS/x86_64/saltpeter-agent-${version}-1.x86_64.rpm" "$rpm_file"
echo "built $rpm_file"
