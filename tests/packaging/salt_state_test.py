#!/usr/bin/env python3
"""The Salt state in docs/deploy.md picks the right package for every arch
(tests/packaging/check.sh runs this; no Salt needed).

usage: salt_state_test.py DEPLOY_MD VERSION DISTDIR

Takes the ```yaml block between the `salt-state: begin` and `salt-state:
end` markers of docs/deploy.md, renders it with jinja2 (as Salt's default
renderer, jinja|yaml, does first; StrictUndefined, so a misspelt name fails)
with the grains os_family and osarch of each platform below, parses the
result with PyYAML, and asserts it installs exactly the package file
packaging/package.sh names for that arch (and that the file is in DISTDIR
when that arch was built), or fails the state on a platform we do not build.
"""

import os
import re
import sys

import jinja2
import yaml

# The arches: packaging/arches.sh, the one table (its Debian and RPM
# columns name the package files packaging/package.sh makes).
ARCHES_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'packaging', 'arches.sh')
# osarch is dpkg's arch on Debian-family and rpm's %{_host_cpu} on
# RedHat-family, where some hosts report another name for an arch we
# package: old 32-bit RHEL/CentOS say i386, some ARM boards armv7l.
RPM_GRAIN_ALIASES = {'i386': 'i686', 'armv7l': 'armv7hl'}


def platforms():
    """(os_family, osarch grain) -> the package file, one pair per row of
    packaging/arches.sh and per grain alias."""
    text = open(ARCHES_SH, encoding='utf-8').read()
    rows = re.search(r'PACKAGING_ARCHES=\((.*?)\n\)', text, re.S).group(1)
    found = {}
    for row in re.findall(r'"([^"]+)"', rows):
        _triple, deb, rpm = row.split()[:3]
        found[('Debian', deb)] = 'saltpeter-agent_{v}_%s.deb' % deb
        found[('RedHat', rpm)] = 'saltpeter-agent-{v}-1.%s.rpm' % rpm
        for alias, name in RPM_GRAIN_ALIASES.items():
            if name == rpm:
                found[('RedHat', alias)] = 'saltpeter-agent-{v}-1.%s.rpm' % rpm
    assert len(found) >= 8, 'packaging/arches.sh: PACKAGING_ARCHES not found or too short'
    return found


PLATFORMS = platforms()
UNSUPPORTED = [('Debian', 'ppc64el'), ('RedHat', 's390x'), ('Suse', 'x86_64')]


def main():
    deploy_md, version, distdir = sys.argv[1], sys.argv[2], sys.argv[3]
    text = open(deploy_md, encoding='utf-8').read()
    block = re.search(r'<!-- salt-state: begin -->\s*```yaml\n(.*?)```\s*<!-- salt-state: end -->', text, re.S)
    if not block:
        print('salt_state_test.py: FAIL: no ```yaml block between the salt-state markers in %s' % deploy_md)
        return 1
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(block.group(1))
    # Salt's execution modules as the template calls them: pillar.get gives
    # the default (no pillar set), the version this tree packages.
    salt = {'pillar.get': lambda key, default=None: default}
    failures = []
    for (family, osarch), pattern in PLATFORMS.items():
        expected = pattern.format(v=version)
        try:
            state = yaml.safe_load(template.render(grains={'os_family': family, 'osarch': osarch}, salt=salt))
        except (jinja2.TemplateError, yaml.YAMLError) as e:
            failures.append('%s %s: does not render: %s' % (family, osarch, e))
            continue
        want = {'saltpeter-agent': {'pkg.installed': [
            {'sources': [{'saltpeter-agent': 'salt://saltpeter-agent/files/' + expected}]}]}}
        if family == 'Debian':
            # apt-get installs an older version of a file only with it.
            want['saltpeter-agent']['pkg.installed'].append({'force_yes': True})
        if state != want:
            failures.append('%s %s: rendered %r, expected %r' % (family, osarch, state, want))
        built = os.path.exists(os.path.join(distdir, expected))
        print('  %-6s %-8s -> %s%s' % (family, osarch, expected, '' if built else ' (not built here)'))
    for family, osarch in UNSUPPORTED:
        state = yaml.safe_load(template.render(grains={'os_family': family, 'osarch': osarch}, salt=salt))
        steps = (state or {}).get('saltpeter-agent', {})
        comment = ''.join(arg.get('comment', '') for arg in steps.get('test.fail_without_changes') or [])
        if '%s %s' % (family, osarch) not in comment:
            failures.append('%s %s: rendered %r, expected a failing state saying why in its comment' % (family, osarch, state))
        print('  %-6s %-8s -> fails: %s' % (family, osarch, steps.get('test.fail_without_changes')))
    # The built packages must all be reachable through the state.
    named = {p.format(v=version) for p in PLATFORMS.values()}
    for name in sorted(os.listdir(distdir)):
        if re.match(r'saltpeter-agent.*\.(deb|rpm)$', name) and name not in named:
            failures.append('%s is built but no osarch picks it' % name)
    for failure in failures:
        print('salt_state_test.py: FAIL: ' + failure)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
