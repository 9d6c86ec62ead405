#!/usr/bin/env python3
"""Run one job through a packaged sp_wrapper against the real Saltpeter
endpoint and assert what the server recorded (tests/packaging/check.sh).

usage: run_job.py VERSION WRAPPER [RUNNER...]

WRAPPER is the binary unpacked from a package; RUNNER (e.g. qemu-aarch64)
runs it when it is for another arch. Exits 0 only if the server recorded
retcode 3, the job's exact output, and wrapper_version VERSION; prints the
record either way.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'harness'))
from endpoint_client import EndpointClient  # noqa: E402

# stdout and stderr are two pipes with no common order, so the check takes
# the recorded lines as a multiset; the UTF-8 line proves no mangling.
COMMAND = 'echo "line one"; echo "on stderr" >&2; printf "ünïcödé ✓\\n"; echo "line $((40 + 2))"; exit 3'
EXPECTED_LINES = ['line one', 'on stderr', 'ünïcödé ✓', 'line 42']


def main():
    version, wrapper, runner = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]
    workdir = tempfile.mkdtemp(prefix='sp_pkg_')
    with EndpointClient(workdir) as endpoint:
        failed = run(version, wrapper, runner, workdir, endpoint)
    if failed:
        print('run_job.py: kept %s (logs)' % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return failed


def run(version, wrapper, runner, workdir, endpoint):
    job, machine = 'pkg-check', 'pkg-minion'
    instance = '%s_%d' % (job, time.time_ns())
    endpoint.ask(cmd='add_job', name=job, instance=instance, machines=[machine])
    env = {
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
        'SP_WEBSOCKET_URL': endpoint.url,
        'SP_JOB_NAME': job, 'SP_JOB_INSTANCE': instance, 'SP_COMMAND': COMMAND,
        'SP_MACHINE_ID': machine, 'SP_TIMEOUT': '60', 'SP_WRAPPER_LOGLEVEL': 'normal',
        'SP_WRAPPER_LOGDIR': workdir, 'SP_ALLOW_OVERLAP': 'false',
        'SP_LOCKFILE': os.path.join(workdir, 'job.lock'),
    }
    started = time.monotonic()
    # As Salt does: wait for the launcher and for its pipes to close.
    launch = subprocess.run(runner + [wrapper], env=env, capture_output=True, text=True, timeout=30)
    print('launcher (%s) exit %d after %.0f ms: %r' % (
        ' '.join(runner + [os.path.basename(wrapper)]), launch.returncode,
        (time.monotonic() - started) * 1000, (launch.stdout + launch.stderr).strip()))
    result = endpoint.ask(cmd='wait_result', name=job, machine=machine, timeout=60)
    recorded = result.get('ret', '')
    print('server recorded: retcode %r, wrapper_version %r, starttime %s, endtime %s, output %r' % (
        result.get('retcode'), result.get('wrapper_version'), result.get('starttime'),
        result.get('endtime'), recorded))
    failures = []
    if launch.returncode != 0:
        failures.append('the launcher exited %d' % launch.returncode)
    if not result.get('ok'):
        failures.append('no result with an end time within 60 s')
    if result.get('retcode') != 3:
        failures.append('retcode %r, expected 3' % result.get('retcode'))
    if sorted(recorded.splitlines()) != sorted(EXPECTED_LINES) or not recorded.endswith('\n'):
        failures.append('output %r, expected the lines %r' % (recorded, EXPECTED_LINES))
    if result.get('wrapper_version') != version:
        failures.append('wrapper_version %r, expected %r' % (result.get('wrapper_version'), version))
    if not result.get('starttime') or not result.get('endtime'):
        failures.append('no start or end time recorded')
    for failure in failures:
        print('run_job.py: FAIL: ' + failure)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
