"""tests/e2e/test_deploy.py: the Salt states of docs/deploy.md applied by the
real minion of the stack (issue 25, items 1 and 2), each taken from the
page's text between its `salt-state ...: begin`/`end` markers, so the page
cannot drift from what is tested:

- the file-server state installs the package `./build.sh package` made for
  this host's arch (amd64: this test runs only on a Debian-family amd64 host,
  and really installs it through dpkg), a second apply changes nothing, and
  the Saltpeter server runs a job through /usr/bin/sp_wrapper;
- an upgrade to N+1 and a downgrade back to N, each while a job of the other
  version runs: both runs' records are exact, and the next run reports the
  new version;
- the removal state purges, leaving nothing that runs;
- the file.managed variant (no package) puts the binary in place, and its
  removal state takes it away;
- the repository state (one state for Debian and RPM) installs from a local
  apt repository (the stack's APT_CONFIG: the host's apt setup is not used);
- /var/log/sp_wrapper gets 0750 whether it was there at 0755 or missing;
- rendered only: the RPM half, under RedHat grains set on the minion
  (`state.show_sls`), and rpm's handling of an existing log directory, with
  `rpm --root` on a scratch tree;
- a minion reporting an unsupported arch fails with the reason as comment.

N+1 (1.0.1 for 1.0.0) is the x86_64 binary built again with
SP_WRAPPER_VERSION set (.ci/e2e.sh, build_e2e_next: SP_E2E_NEXT_WRAPPER names
it), packaged by packaging/package.sh with a changelog that starts with it.
(Rewriting the version string in N's file is not enough: the compiler also
stores the version's bytes as immediates in the code that builds the
`start` frame, and the server was told 1.0.0 by a binary saying 1.0.1.)

The module's fixture skips everything, saying why, when a saltpeter-agent
package (or a file it would own) is on the host before the test, and purges
what the tests installed afterwards, even when they fail.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from stack import parse_time, wait_until

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
DEPLOY_MD = os.path.join(REPO, 'docs', 'deploy.md')
PACKAGES = os.environ.get('SP_E2E_PACKAGES') or os.path.join(REPO, 'dist')
INSTALLED = '/usr/bin/sp_wrapper'
LOGDIR = '/var/log/sp_wrapper'
# What the package puts on the host that could run or be run.
PACKAGE_PATHS = (INSTALLED, '/etc/logrotate.d/saltpeter-agent', '/usr/libexec/saltpeter-agent',
                 '/usr/share/man/man1/sp_wrapper.1.gz', '/usr/share/doc/saltpeter-agent')
# Salt round trip plus a dpkg install on a loaded 2-core machine.
LAUNCH = 60
SALT_TIMEOUT = 180


def cargo_version():
    with open(os.path.join(REPO, 'Cargo.toml')) as f:
        return re.search(r'^version = "(.*)"', f.read(), re.M).group(1)


VERSION = cargo_version()


# N+1: the x86_64 binary built again with SP_WRAPPER_VERSION set (.ci/e2e.sh,
# build_e2e_next), so the version it reports really differs.
NEXT_WRAPPER = os.environ.get('SP_E2E_NEXT_WRAPPER', '')


def doc_state(name=''):
    """The ```yaml block of docs/deploy.md between `<!-- salt-state NAME:
    begin -->` and its end marker (no NAME: the file-server state)."""
    marker = 'salt-state' + (' ' + name if name else '')
    with open(DEPLOY_MD, encoding='utf-8') as f:
        text = f.read()
    found = re.search(r'<!-- %s: begin -->\s*```yaml\n(.*?)```\s*<!-- %s: end -->'
                      % (re.escape(marker), re.escape(marker)), text, re.S)
    assert found, 'docs/deploy.md has no ```yaml block between the %s markers' % marker
    return found.group(1)


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=SALT_TIMEOUT, **kwargs)


def package_status():
    """dpkg's status of saltpeter-agent ('' when dpkg knows nothing of it)."""
    result = run(['dpkg-query', '-W', '-f', '${Status}', 'saltpeter-agent'])
    return result.stdout.strip() if result.returncode == 0 else ''


def installed_version():
    result = run(['dpkg-query', '-W', '-f', '${Status} ${Version}', 'saltpeter-agent'])
    out = result.stdout.strip()
    return out.rsplit(' ', 1)[1] if out.startswith('install ok installed ') else None


def mode_of(path):
    return '%o' % (os.stat(path).st_mode & 0o7777)


# ---------------------------------------------------------------- Salt calls
_clients = {}


def salt(stack, fun, *args, **kwargs):
    """`salt <minion> FUN ARGS` through the master, as the CLI does it
    (salt.client.LocalClient, in this process: the CLI's own start-up would
    add about a second to each of the ~30 calls); (exit code, the answer)."""
    import salt.client  # the e2e venv's Salt, as the stack's daemons run it
    if stack.conf not in _clients:
        _clients[stack.conf] = salt.client.LocalClient(os.path.join(stack.conf, 'master'))
    returns = _clients[stack.conf].cmd(stack.minion_id, fun, list(args), timeout=150,
                                       kwarg=kwargs or None, full_return=True)
    if stack.minion_id not in returns:
        raise AssertionError('%s %s: no answer from %s: %r' % (fun, args, stack.minion_id, returns))
    answer = returns[stack.minion_id]
    return answer.get('retcode', 0), answer.get('ret')


def salt_cli(stack, *args):
    """The operator's command itself, `salt <minion> ARGS`; the minion's answer."""
    result = run([os.path.join(stack.venv_bin, 'salt'), '--out=json', '--static', '-t', '150',
                  stack.minion_id] + list(args), env=stack.env)
    try:
        return json.loads(result.stdout)[stack.minion_id]
    except (ValueError, KeyError):
        raise AssertionError('salt %s: no answer from %s (exit %d): %s %s' % (
            ' '.join(args), stack.minion_id, result.returncode, result.stdout, result.stderr))


def apply(stack, sls, version=None):
    """state.apply SLS (with the version in pillar); (exit code, the one
    state's result: result, changes, comment)."""
    pillar = {'pillar': {'saltpeter_agent': {'version': version}}} if version else {}
    code, answer = salt(stack, 'state.apply', sls, **pillar)
    assert isinstance(answer, dict) and len(answer) == 1, 'state.apply %s: %r' % (sls, answer)
    return code, next(iter(answer.values()))


def show_sls(stack, sls):
    code, answer = salt(stack, 'state.show_sls', sls)
    assert code == 0 and isinstance(answer, dict), 'state.show_sls %s: %r' % (sls, answer)
    return answer


def applied(stack, sls, version=None, changes=True):
    """Apply and assert success; returns the state's changes."""
    code, state = apply(stack, sls, version)
    assert code == 0 and state['result'] is True, 'state.apply %s: exit %d, %r' % (sls, code, state)
    assert bool(state['changes']) == changes, 'state.apply %s: changes %r' % (sls, state['changes'])
    return state['changes']


# ---------------------------------------------------------------- Saltpeter
def record(stack, cron, since, timeout=LAUNCH):
    """The stored result of the run of cron asked for at `since`, once it has
    ended. These crons run more than once: until the new run's result
    replaces it, the server serves the last run's, so its start time is
    checked too (Stack.wait_finished looks at last_run only)."""
    def finished():
        data = stack.details(cron)
        results = data.get('results') or {}
        result = results.get(stack.minion_id) or {}
        if not result.get('starttime') or parse_time(result['starttime']) < since - 1:
            return None
        if result.get('endtime') in (None, ''):
            return None
        assert set(results) == {stack.minion_id}, results.keys()
        return result
    return wait_until('a finished run of %s asked for at %.1f' % (cron, since), finished, timeout, interval=0.5)


def assert_record(result, ret, retcode, version):
    got = {k: result.get(k) for k in ('ret', 'retcode', 'wrapper_version')}
    assert got == {'ret': ret, 'retcode': retcode, 'wrapper_version': version}, result


def agents_of(stack, cron=None):
    """pids of agents of this stack run from the installed path (their
    environment names the stack's lock directory), of one cron or all."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink('/proc/%s/exe' % entry)
            with open('/proc/%s/environ' % entry, 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:
            continue
        if not exe.startswith(INSTALLED):
            continue
        if not any(v.startswith(b'SP_') and stack.root.encode() in v for v in environ):
            continue
        if cron is None or ('SP_JOB_NAME=' + cron).encode() in environ:
            found.append(int(entry))
    return found


# ------------------------------------------------------------------- fixture
class Deploy:
    pass


def build_next(work):
    """The N+1 packages: packaging/package.sh on the N+1 binary, with a
    changelog that starts with N+1 (package.sh refuses a binary whose
    --version is not the package's). Returns (version, package paths)."""
    if not os.access(NEXT_WRAPPER, os.X_OK):
        pytest.fail('SP_E2E_NEXT_WRAPPER (%r) names no binary: run the suite through ./build.sh e2e, '
                    'which builds the N+1 of the upgrade test' % NEXT_WRAPPER)
    says = run([NEXT_WRAPPER, '--version']).stdout.split()
    assert len(says) == 2 and says[0] == 'sp_wrapper' and says[1] != VERSION, says
    version = says[1]
    dist = os.path.join(work, 'dist')
    os.makedirs(dist)
    shutil.copy(NEXT_WRAPPER, os.path.join(dist, 'sp_wrapper'))
    with open(os.path.join(REPO, 'packaging', 'changelog')) as f:
        changelog = f.read()
    signature = re.search(r'^ -- .*$', changelog, re.M).group(0)
    with open(os.path.join(work, 'changelog'), 'w') as f:
        f.write('saltpeter-agent (%s) unstable; urgency=medium\n\n'
                '  * Test build (tests/e2e/test_deploy.py): %s built with SP_WRAPPER_VERSION=%s.\n\n'
                '%s\n\n%s' % (version, VERSION, version, signature, changelog))
    out = os.path.join(work, 'out')
    result = run(['bash', os.path.join(REPO, 'packaging', 'package.sh'), version, dist, out],
                 env=dict(os.environ, SP_PACKAGE_CHANGELOG=os.path.join(work, 'changelog')))
    assert result.returncode == 0, 'package.sh %s: %s%s' % (version, result.stdout, result.stderr)
    return version, [os.path.join(out, name) for name in sorted(os.listdir(out))]


@pytest.fixture(scope='module')
def deploy(stack):
    if shutil.which('dpkg') is None or run(['dpkg', '--print-architecture']).stdout.strip() != 'amd64':
        pytest.skip('the deploy tests install the amd64 .deb through dpkg: this host is not Debian-family amd64')
    status = package_status()
    if status and status != 'unknown ok not-installed':
        pytest.skip('a saltpeter-agent package was on this host before the test (dpkg: %s): '
                    'the deploy tests install and purge theirs, so they leave it alone' % status)
    present = [p for p in PACKAGE_PATHS if os.path.lexists(p)]
    if present:
        pytest.skip('%s exist(s) without the package: the deploy tests would overwrite and remove them'
                    % ', '.join(present))
    deb = os.path.join(PACKAGES, 'saltpeter-agent_%s_amd64.deb' % VERSION)
    if not os.path.exists(deb):
        pytest.fail('%s is missing: run ./build.sh package (./build.sh e2e does)' % deb)
    d = Deploy()
    d.work = os.path.join(stack.root, 'deploy')
    os.makedirs(d.work)
    # The host's own log directory (the Python wrapper's, say) is set aside
    # for the test and put back after.
    d.saved_logdir = None
    if os.path.lexists(LOGDIR):
        d.saved_logdir = '%s.e2e-saved-%s' % (LOGDIR, stack.minion_id)
        os.rename(LOGDIR, d.saved_logdir)
    try:
        started = time.monotonic()
        d.next, d.next_packages = build_next(os.path.join(d.work, 'next'))
        print('[deploy] %s packages built in %.1f s: %s' % (
            d.next, time.monotonic() - started, ' '.join(map(os.path.basename, d.next_packages))))
        # The master's file server, as docs/deploy.md lays it out.
        top = os.path.join(stack.file_root, 'saltpeter-agent')
        files = os.path.join(top, 'files')
        os.makedirs(files)
        built = [os.path.join(PACKAGES, n) for n in os.listdir(PACKAGES)
                 if re.match(r'saltpeter-agent.*\.(deb|rpm)$', n)]
        for path in built + d.next_packages:
            shutil.copy(path, files)
        for name, text in (('init.sls', doc_state()), ('removed.sls', doc_state('removed'))):
            with open(os.path.join(top, name), 'w') as f:
                f.write(text)
        # The repository and file.managed variants: their own names here,
        # the same text.
        for name, block in (('saltpeter-agent-repo/init.sls', 'repo'),
                            ('saltpeter-agent-file/init.sls', 'file'),
                            ('saltpeter-agent-file/removed.sls', 'file-removed')):
            os.makedirs(os.path.dirname(os.path.join(stack.file_root, name)), exist_ok=True)
            with open(os.path.join(stack.file_root, name), 'w') as f:
                f.write(doc_state(block))
        # The file.managed variant's binary and its sha256sum, per osarch.
        os.makedirs(os.path.join(files, 'amd64'))
        shutil.copy(os.path.join(REPO, 'dist', 'sp_wrapper'), os.path.join(files, 'amd64', 'sp_wrapper'))
        with open(os.path.join(files, 'amd64', 'sp_wrapper.sha256'), 'w') as f:
            f.write(run(['sha256sum', 'sp_wrapper'], cwd=os.path.join(files, 'amd64')).stdout)
        # Jobs through the installed path. The long ones write a line, then
        # wait (at most 60 s) for the test's go-ahead, then write another.
        d.flags = {}
        crons = {'deploy_run': stack.cron('echo one; echo two; exit 3', wrapper_path=INSTALLED)}
        for cron in ('deploy_upgrade', 'deploy_downgrade'):
            d.flags[cron] = os.path.join(d.work, cron + '.go')
            crons[cron] = stack.cron(
                'echo before; i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo after'
                % d.flags[cron], wrapper_path=INSTALLED)
        stack.write_crons('deploy', crons)
        yield d
    finally:
        clean_up(stack, d)


def clean_up(stack, d):
    stack.kill_agents(agents_of(stack))
    if package_status() not in ('', 'unknown ok not-installed'):
        result = run(['dpkg', '--purge', 'saltpeter-agent'])
        print('[deploy] cleanup: dpkg --purge saltpeter-agent: exit %d %s' % (result.returncode, result.stderr))
    # Left by the file.managed variant's test, or by dpkg after a failure:
    # nothing of it was there before (the fixture checked).
    for path in PACKAGE_PATHS:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    if os.path.lexists(LOGDIR):
        shutil.rmtree(LOGDIR)
    if d.saved_logdir:
        os.rename(d.saved_logdir, LOGDIR)
    try:
        os.remove(os.path.join(stack.sp_conf, 'deploy.yaml'))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------- tests
def test_rendered_for_rpm_and_unsupported_arches_fail_with_a_comment(stack, deploy):
    """Grains set on the minion (grains.setval): the RPM half rendered, and an
    unsupported arch applied. Nothing is installed."""
    try:
        assert salt(stack, 'grains.setvals', {'os_family': 'RedHat', 'osarch': 'x86_64'})[0] == 0
        rpm = 'saltpeter-agent-%s-1.x86_64.rpm' % VERSION
        state = show_sls(stack, 'saltpeter-agent')['saltpeter-agent']
        assert 'installed' in state['pkg'], state
        assert {'sources': [{'saltpeter-agent': 'salt://saltpeter-agent/files/' + rpm}]} in state['pkg'], state
        state = show_sls(stack, 'saltpeter-agent-repo')['saltpeter-agent']
        assert {'version': '%s-1' % VERSION} in state['pkg'], state
        state = show_sls(stack, 'saltpeter-agent.removed')['saltpeter-agent']
        assert 'purged' in state['pkg'], state
        assert salt(stack, 'grains.setvals', {'os_family': 'Debian', 'osarch': 's390x'})[0] == 0
        code, state = apply(stack, 'saltpeter-agent')
        assert state['result'] is False, state
        assert state['comment'].startswith('no saltpeter-agent package for Debian s390x ('), state
        assert not state['changes']
    finally:
        for key in ('os_family', 'osarch'):
            salt(stack, 'grains.delkey', key)
    code, grains = salt(stack, 'grains.item', 'os_family', 'osarch')
    assert grains == {'os_family': 'Debian', 'osarch': 'amd64'}, grains
    assert package_status() in ('', 'unknown ok not-installed')


def test_rpm_gives_an_existing_log_dir_the_package_mode(deploy, tmp_path):
    rpm = os.path.join(PACKAGES, 'saltpeter-agent-%s-1.x86_64.rpm' % VERSION)
    if shutil.which('rpm') is None:
        pytest.skip('no rpm here (./build.sh deps installs it)')
    os.makedirs(tmp_path / 'var' / 'log' / 'sp_wrapper', mode=0o755)
    os.chmod(tmp_path / 'var' / 'log' / 'sp_wrapper', 0o755)
    assert run(['rpm', '--root', str(tmp_path), '--initdb']).returncode == 0
    result = run(['rpm', '--root', str(tmp_path), '-i', '--nodeps', '--noscripts', rpm])
    assert result.returncode == 0, result.stderr
    assert mode_of(tmp_path / 'var' / 'log' / 'sp_wrapper') == '750'


def test_file_managed_variant_puts_the_binary_in_place_and_removes_it(stack, deploy):
    os.makedirs(LOGDIR)
    os.chmod(LOGDIR, 0o755)
    code, answer = salt(stack, 'state.apply', 'saltpeter-agent-file')
    assert code == 0 and all(s['result'] is True for s in answer.values()), answer
    assert run([INSTALLED, '--version']).stdout == 'sp_wrapper %s\n' % VERSION
    assert (mode_of(INSTALLED), mode_of(LOGDIR)) == ('755', '750')
    code, answer = salt(stack, 'state.apply', 'saltpeter-agent-file')
    assert code == 0 and not any(s['changes'] for s in answer.values()), answer
    changes = applied(stack, 'saltpeter-agent-file.removed')
    assert changes == {'removed': INSTALLED}, changes
    assert not os.path.lexists(INSTALLED)


def test_file_server_state_installs_and_a_job_runs_through_it(stack, deploy):
    # A host moving from the Python wrapper: the log directory at 0755.
    os.makedirs(LOGDIR, exist_ok=True)
    os.chmod(LOGDIR, 0o755)
    # As docs/deploy.md says: salt '*' state.apply saltpeter-agent.
    answer = salt_cli(stack, 'state.apply', 'saltpeter-agent')
    assert len(answer) == 1, answer
    state = next(iter(answer.values()))
    assert state['result'] is True, state
    assert state['changes'] == {'saltpeter-agent': {'old': '', 'new': VERSION}}, state
    assert installed_version() == VERSION
    assert mode_of(LOGDIR) == '750'
    assert run([INSTALLED, '--version']).stdout == 'sp_wrapper %s\n' % VERSION
    applied(stack, 'saltpeter-agent', changes=False)
    result = record(stack, 'deploy_run', stack.run('deploy_run'))
    assert_record(result, 'one\ntwo\n', 3, VERSION)


def upgrade_under_a_running_job(stack, deploy, cron, old, new):
    """Start cron on `old`, apply the state for `new` while it runs; the run
    ends exact on `old`, the next run is `new`."""
    assert installed_version() == old
    asked = stack.run(cron)
    running = wait_until('%s running and its first line stored' % cron,
                         lambda: stack.details(cron).get('results', {}).get(stack.minion_id, {})
                         .get('ret', '').startswith('before\n') and stack.details(cron), LAUNCH)
    assert running['results'][stack.minion_id].get('wrapper_version') == old
    agents = agents_of(stack, cron)
    assert agents, 'no agent of %s running from %s' % (cron, INSTALLED)
    changes = applied(stack, 'saltpeter-agent', new)
    assert changes == {'saltpeter-agent': {'old': old, 'new': new}}, changes
    assert installed_version() == new
    assert run([INSTALLED, '--version']).stdout == 'sp_wrapper %s\n' % new
    # The running guardian and daemon go on with the old, replaced inode.
    for pid in agents:
        assert os.readlink('/proc/%d/exe' % pid) == INSTALLED + ' (deleted)', pid
    open(deploy.flags[cron], 'w').close()
    assert_record(record(stack, cron, asked), 'before\nafter\n', 0, old)
    assert_record(record(stack, 'deploy_run', stack.run('deploy_run')), 'one\ntwo\n', 3, new)
    assert mode_of(LOGDIR) == '750'


def test_upgrade_under_a_running_job(stack, deploy):
    upgrade_under_a_running_job(stack, deploy, 'deploy_upgrade', VERSION, deploy.next)


def test_downgrade_under_a_running_job(stack, deploy):
    upgrade_under_a_running_job(stack, deploy, 'deploy_downgrade', deploy.next, VERSION)


def assert_removed():
    assert package_status() in ('', 'unknown ok not-installed'), package_status()
    left = [p for p in PACKAGE_PATHS if os.path.lexists(p)]
    assert not left, 'left after the purge: %s' % left


def test_removal_state_leaves_nothing_that_runs(stack, deploy):
    assert installed_version() == VERSION
    changes = applied(stack, 'saltpeter-agent.removed')
    # (pkg.purged reports the installed package gone under `installed`.)
    assert changes.get('installed') == {'saltpeter-agent': {'old': VERSION, 'new': ''}}, changes
    assert_removed()
    # The log directory held nothing (the jobs log in the stack's directory):
    # it went with the package.
    assert not os.path.lexists(LOGDIR)
    applied(stack, 'saltpeter-agent.removed', changes=False)


def test_repository_state_installs_from_a_repository(stack, deploy):
    assert package_status() in ('', 'unknown ok not-installed') and not os.path.lexists(LOGDIR)
    repo = os.path.join(deploy.work, 'apt-repo')
    os.makedirs(repo)
    shutil.copy(os.path.join(PACKAGES, 'saltpeter-agent_%s_amd64.deb' % VERSION), repo)
    for path in deploy.next_packages:
        if path.endswith('.deb'):
            shutil.copy(path, repo)
    with open(os.path.join(repo, 'Packages'), 'w') as f:
        subprocess.run(['dpkg-scanpackages', '--multiversion', '.'], cwd=repo, stdout=f,
                       stderr=subprocess.DEVNULL, check=True)
    with open(os.path.join(stack.root, 'apt', 'sources.list'), 'w') as f:
        f.write('deb [trusted=yes] file:%s ./\n' % repo)
    changes = applied(stack, 'saltpeter-agent-repo')
    assert changes == {'saltpeter-agent': {'old': '', 'new': VERSION}}, changes
    assert installed_version() == VERSION
    # The log directory was missing: it gets the package's mode too.
    assert mode_of(LOGDIR) == '750'
    applied(stack, 'saltpeter-agent-repo', changes=False)
    # A plain remove (what pkg.removed does) keeps the logrotate conffile,
    # which logrotate would go on running: the removal state purges it.
    assert run(['dpkg', '--remove', 'saltpeter-agent']).returncode == 0
    assert package_status() == 'deinstall ok config-files'
    assert os.path.exists('/etc/logrotate.d/saltpeter-agent') and not os.path.lexists(INSTALLED)
    applied(stack, 'saltpeter-agent.removed')
    assert_removed()
