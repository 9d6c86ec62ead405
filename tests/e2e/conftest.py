"""tests/e2e/conftest.py: one real stack (salt-master, salt-minion, the
Saltpeter server, dist/sp_wrapper as its wrapper) for the whole session, torn
down at the end even when a test fails or the run is interrupted.

SP_E2E_WRAPPER overrides the agent binary (default: dist/sp_wrapper).
The temporary directory is removed after a clean run and kept (its path
printed) when something failed, for its logs."""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import Stack  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _interrupt(signum, frame):
    # SIGTERM (CI timeouts, build.sh's trap) unwinds like Ctrl-C, so the
    # session fixture's teardown still stops every daemon.
    raise KeyboardInterrupt('signal %d' % signum)


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.session.e2e_failed = True


@pytest.fixture(scope='session')
def stack(request):
    if os.geteuid() != 0:
        pytest.skip('the end-to-end suite runs salt-master and salt-minion as root (SP_USER, root_dir)')
    wrapper = os.environ.get('SP_E2E_WRAPPER') or os.path.join(REPO, 'dist', 'sp_wrapper')
    if not os.access(wrapper, os.X_OK):
        pytest.fail('%s is missing: run ./build.sh build first' % wrapper)
    s = Stack(wrapper, os.path.dirname(sys.executable))
    try:
        s.start(crons(s))
        yield s
    except BaseException:
        request.session.e2e_failed = True
        raise
    finally:
        s.stop()
        strays = s.our_strays()
        if getattr(request.session, 'e2e_failed', False) or strays:
            print('\n[e2e] logs kept in %s; strays after teardown: %s' % (s.root, strays or 'none'))
            for name in ('saltpeter', 'salt-minion', 'salt-master'):
                print('[e2e] tail of %s.out:\n%s' % (name, s.tail(os.path.join('log', name + '.out'), 15)))
        else:
            s.remove()


def crons(s):
    """Every on-demand cron the scenarios fire (the timed one is added by its test)."""
    return {
        'e2e_id': s.cron('echo "SP_MACHINE_ID=${SP_MACHINE_ID:-unset}"'),
        'e2e_timeout': s.cron('echo before; sleep 600', timeout=2),
        'e2e_kill': s.cron('echo $$ > %s/kill.pid; echo ready; exec sleep 600' % s.root),
        'e2e_badcwd': s.cron('pwd', cwd='/nonexistent/e2e-cwd'),
        'e2e_user': s.cron('id -un; id -u; echo "$HOME"', user='nobody'),
        'e2e_large': s.cron('seq 1 400000'),
        'e2e_both_a': s.cron('echo a-start; sleep 5; echo a-end'),
        'e2e_both_b': s.cron('echo b-start; sleep 5; echo b-end'),
        'e2e_quotes': s.cron('echo "it\'s"'),
    }
