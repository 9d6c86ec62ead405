#!/usr/bin/env bash
# Build the .deb and the .rpm of sp_wrapper (./build.sh package calls this).
#   tests/packaging/package.sh VERSION BINARY OUTDIR
# Both install /usr/bin/sp_wrapper, /var/log/sp_wrapper (0750) and the docs
# and license under /usr/share/doc/saltpeter-agent. The binary is static, so
# the packages depend on nothing. Tools: dpkg-deb (Debian's dpkg) and
# rpmbuild (Debian's rpm package, installed here when missing).
set -euo pipefail
version=$1
binary=$(realpath "$2")
outdir=$(realpath -m "$3")
top=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$outdir"

stage() {
    local root=$1
    install -D -m 0755 "$binary" "$root/usr/bin/sp_wrapper"
    install -d -m 0750 "$root/var/log/sp_wrapper"
    install -d -m 0755 "$root/usr/share/doc/saltpeter-agent"
    install -m 0644 "$top/README.md" "$top/LICENSE" "$top"/docs/*.md "$root/usr/share/doc/saltpeter-agent/"
}

description="Saltpeter job agent (sp_wrapper): runs a Saltpeter cron job on a minion and reports it to the server over a WebSocket. One static binary."

# --- .deb ---
deb_root="$work/deb"
stage "$deb_root"
mkdir -p "$deb_root/DEBIAN"
cat > "$deb_root/DEBIAN/control" <<CONTROL
Package: saltpeter-agent
Version: $version
Architecture: amd64
Maintainer: saltpeter-agent maintainers <root@localhost>
Section: admin
Priority: optional
Installed-Size: $(du -sk "$deb_root" | cut -f1)
Description: Saltpeter job agent (sp_wrapper)
 Runs a Saltpeter cron job on a minion and reports it to the server over a
 WebSocket. One static binary with no dependencies.
CONTROL
deb="$outdir/saltpeter-agent_${version}_amd64.deb"
dpkg-deb --build --root-owner-group "$deb_root" "$deb" >/dev/null
echo "built $deb"

# --- .rpm ---
if ! command -v rpmbuild >/dev/null; then
    echo "rpmbuild is missing: installing Debian's rpm package" >&2
    apt-get install -y -q rpm >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q rpm >/dev/null; } || {
        echo "package.sh: cannot install rpmbuild; run 'apt-get install rpm' (Debian) and retry" >&2
        exit 1
    }
fi
rpm_stage="$work/rpmstage"
stage "$rpm_stage"
mkdir -p "$work/rpm/SPECS"
cat > "$work/rpm/SPECS/saltpeter-agent.spec" <<SPEC
Name:           saltpeter-agent
Version:        $version
Release:        1
Summary:        Saltpeter job agent (sp_wrapper)
License:        MIT
BuildArch:      x86_64
AutoReqProv:    no
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none

%description
$description

%install
cp -a $rpm_stage/. %{buildroot}/

%files
%attr(0755,root,root) /usr/bin/sp_wrapper
%dir %attr(0750,root,root) /var/log/sp_wrapper
%doc /usr/share/doc/saltpeter-agent
SPEC
rpmbuild -bb --quiet --define "_topdir $work/rpm" "$work/rpm/SPECS/saltpeter-agent.spec" >/dev/null
rpm_file="$outdir/saltpeter-agent-${version}-1.x86_64.rpm"
cp "$work/rpm/RPMS/x86_64/saltpeter-agent-${version}-1.x86_64.rpm" "$rpm_file"
echo "built $rpm_file"
