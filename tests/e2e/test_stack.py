"""tests/e2e/test_stack.py: the scenarios of issue 13 on the real stack.
Every assertion is on what Saltpeter itself stored: the details its UI
WebSocket serves (output, retcode, start and end times per machine) and its
per-cron log. See stack.py for the stack and conftest.py for its lifetime."""

import os
import pwd
import socket
import time
from datetime import datetime, timedelta, timezone

from stack import parse_time, wait_until

# Salt round trip (test.ping, then cmd.run_all) on a loaded 2-core machine.
LAUNCH = 60


def result_of(stack, data):
    """The one machine's stored result; the run must name only our minion."""
    assert set(data['results']) == {stack.minion_id}, data['results'].keys()
    return data['results'][stack.minion_id]


def duration(result):
    return parse_time(result['endtime']) - parse_time(result['starttime'])


def test_cron_fired_by_time(stack):
    # A schedule a few seconds ahead, added to the running server's config.
    at = (datetime.now(timezone.utc) + timedelta(seconds=6)).replace(microsecond=0)
    stack.write_crons('timed', {'e2e_timed': stack.cron(
        'echo tick; sleep 1; echo tock >&2; exit 7',
        sec=at.second, min=at.minute, hour=at.hour, dom='*', mon='*', dow='*', year='*')})
    try:
        data = stack.wait_finished('e2e_timed', at.timestamp(), 30 + LAUNCH)
    finally:
        os.remove(os.path.join(stack.sp_conf, 'timed.yaml'))
    result = result_of(stack, data)
    assert result['ret'] == 'tick\ntock\n'
    assert result['retcode'] == 7
    started = parse_time(result['starttime'])
    assert at.timestamp() <= parse_time(data['last_run']) < at.timestamp() + 5, data['last_run']
    assert at.timestamp() < started < at.timestamp() + LAUNCH
    assert 1.0 <= duration(result) < 10, (result['starttime'], result['endtime'])
    log = stack.cron_log('e2e_timed')
    assert '###### Starting e2e_timed_' in log
    assert '**** Exit Code 7 ******\ntick\ntock\n' in log


def test_machine_id_is_the_minion_id_without_sp_machine_id(stack):
    assert stack.minion_id not in (socket.gethostname(), socket.getfqdn())
    with open('/proc/%d/environ' % stack.processes['salt-minion'].pid, 'rb') as f:
        minion_env = f.read().split(b'\0')
    assert not any(v.startswith(b'SP_MACHINE_ID=') for v in minion_env)
    data = stack.wait_finished('e2e_id', stack.run('e2e_id'), LAUNCH)
    result = result_of(stack, data)
    assert result['ret'] == 'SP_MACHINE_ID=unset\n'
    assert result['retcode'] == 0
    source = 'machine id "%s" from id: in %s' % (
        stack.minion_id, os.path.join(stack.conf, 'minion.d', '50-id.conf'))
    assert source in stack.agent_log_text('e2e_id')
    assert 'Not in expected machines list' not in stack.tail('log/saltpeter.out', 100000)


def test_timeout_is_124_from_the_agent(stack):
    data = stack.wait_finished('e2e_timeout', stack.run('e2e_timeout'), LAUNCH + 20)
    result = result_of(stack, data)
    assert result['retcode'] == 124
    assert result['ret'].startswith('before\n')
    assert 'Job exceeded timeout of 2 seconds' in result['ret']
    # The agent's own 124, not the server's after timeout + 30 s.
    assert 'SALTPETER ERROR' not in result['ret']
    assert 2.0 <= duration(result) < 10


def test_kill_from_the_ui_is_143(stack):
    stack.run('e2e_kill')
    wait_until('the kill job running and its output stored',
               lambda: 'ready' in stack.details('e2e_kill').get('results', {})
               .get(stack.minion_id, {}).get('ret', ''), LAUNCH)
    with open(os.path.join(stack.root, 'kill.pid')) as f:
        job_pid = int(f.read())
    asked = time.time()
    stack.ui({'killCron': 'e2e_kill'})
    data = stack.wait_finished('e2e_kill', asked - 3600, 25)
    result = result_of(stack, data)
    assert result['retcode'] == 143
    assert result['ret'].startswith('ready\n')
    # Ended by the agent, not by the server's 30 s grace period.
    assert 'grace period expired' not in result['ret']
    assert parse_time(result['endtime']) - asked < 10
    wait_until('the job process gone', lambda: not os.path.exists('/proc/%d' % job_pid), 10)


def test_bad_cwd_is_reported_at_once(stack):
    asked = stack.run('e2e_badcwd')
    data = stack.wait_finished('e2e_badcwd', asked, LAUNCH)
    result = result_of(stack, data)
    # Saltpeter records a launch failure as 254 with Salt's stdout/stderr.
    assert result['retcode'] == 254
    assert 'Wrapper failed to start - Exit code 1' in result['ret']
    assert 'SP_CWD: /nonexistent/e2e-cwd is not an existing directory' in result['ret']
    # At once: not the server's 30 s "failed to connect" window.
    assert parse_time(result['endtime']) - asked < 25
    assert 'Exit Code 254' in stack.cron_log('e2e_badcwd')


def test_user(stack):
    nobody = pwd.getpwnam('nobody')
    data = stack.wait_finished('e2e_user', stack.run('e2e_user'), LAUNCH)
    result = result_of(stack, data)
    assert result['retcode'] == 0
    assert result['ret'] == 'nobody\n%d\n%s\n' % (nobody.pw_uid, nobody.pw_dir)


def test_large_output_arrives_whole(stack):
    expected = ''.join('%d\n' % i for i in range(1, 400001))
    data = stack.wait_finished('e2e_large', stack.run('e2e_large'), LAUNCH + 60)
    result = result_of(stack, data)
    assert result['retcode'] == 0
    assert len(result['ret']) == len(expected) == result['output_length']
    assert result['ret'] == expected
    # Saltpeter writes its per-cron log after it stores the result, once
    # every target is done: 2.7 MB of it can still be on its way.
    def logged():
        log = stack.cron_log('e2e_large')
        return '**** Exit Code 0 ******\n1\n2\n3\n' in log and '\n399999\n400000\n' in log
    wait_until('the whole e2e_large result in its cron log', logged, 20)


def test_two_crons_at_once(stack):
    asked = stack.run('e2e_both_a')
    stack.run('e2e_both_b')
    a = result_of(stack, stack.wait_finished('e2e_both_a', asked, LAUNCH + 10))
    b = result_of(stack, stack.wait_finished('e2e_both_b', asked, LAUNCH + 10))
    assert (a['retcode'], a['ret']) == (0, 'a-start\na-end\n')
    assert (b['retcode'], b['ret']) == (0, 'b-start\nb-end\n')
    # They ran at the same time: each started before the other ended.
    assert parse_time(a['starttime']) < parse_time(b['endtime'])
    assert parse_time(b['starttime']) < parse_time(a['endtime'])


def test_both_quote_kinds_give_a_clear_launch_error(stack):
    # Saltpeter's env={...} is a Python dict's text that Salt parses as YAML:
    # with both quote kinds in the command it fails and the agent gets no
    # SP_* variables at all. The agent must say so, at once.
    asked = stack.run('e2e_quotes')
    result = result_of(stack, stack.wait_finished('e2e_quotes', asked, LAUNCH))
    assert result['retcode'] == 254
    assert 'SP_COMMAND: not set' in result['ret']
    assert "both ' and \"" in result['ret']
    assert parse_time(result['endtime']) - asked < 25


def test_check_through_salt_cmd_run(stack):
    # As an operator asks a fleet: salt '*' cmd.run 'sp_wrapper --check'. No
    # SP_* variables: the defaults are checked, the server is not.
    out = stack.salt('cmd.run', stack.wrapper + ' --check')
    summary = out.splitlines()[-1]
    assert summary.startswith('sp_wrapper --check: OK '), out
    config = os.path.join(stack.conf, 'minion.d', '50-id.conf')
    assert summary.endswith(' id=%s (from id: in %s)' % (stack.minion_id, config)), out
    assert '-     server: not checked (SP_WEBSOCKET_URL is not set)' in out.splitlines()
    # With the address Saltpeter passes: its real endpoint ACKs the connect.
    url = 'ws://127.0.0.1:%d' % stack.machines_port
    out = stack.salt('cmd.run', stack.wrapper + ' --check', 'env={"SP_WEBSOCKET_URL": "%s"}' % url)
    assert out.splitlines()[-1].startswith('sp_wrapper --check: OK '), out
    assert 'ok    server: %s ACKed a connect' % url in out.splitlines(), out
    # A dead server is a failure, in the summary line.
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        dead = 'ws://127.0.0.1:%d' % s.getsockname()[1]
    out = stack.salt('cmd.run', stack.wrapper + ' --check', 'env={"SP_WEBSOCKET_URL": "%s"}' % dead)
    assert out.splitlines()[-1].startswith('sp_wrapper --check: FAILED '), out
    assert 'server: %s: connect to ' % dead in out.splitlines()[-1], out
