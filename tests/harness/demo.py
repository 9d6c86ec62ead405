#!/usr/bin/env python3
"""./build.sh demo: run one job through sp_wrapper against the real Saltpeter
endpoint and show what the server recorded.

usage: demo.py PATH_TO_SP_WRAPPER
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    wrapper = os.path.abspath(sys.argv[1])
    workdir = tempfile.mkdtemp(prefix='sp_demo_')
    endpoint = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'endpoint.py')],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.path.join(workdir, 'endpoint.out'), 'w'),
        text=True)

    def ask(**request):
        endpoint.stdin.write(json.dumps(request) + '\n')
        endpoint.stdin.flush()
        return json.loads(endpoint.stdout.readline())

    try:
        port = json.loads(endpoint.stdout.readline())['port']
        job, instance, machine = 'demo-job', 'demo-job_%d' % int(time.time()), 'demo-minion'
        ask(cmd='add_job', name=job, instance=instance, machines=[machine])
        command = 'echo "hello from $(hostname)"; echo "a warning on stderr" >&2; printf "ünïcödé ✓\\n"; sleep 1; exit 3'
        env = {
            'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
            'SP_WEBSOCKET_URL': 'ws://127.0.0.1:%d' % port,
            'SP_JOB_NAME': job, 'SP_JOB_INSTANCE': instance, 'SP_JOB_INSTANCE_NAME': instance,
            'SP_COMMAND': command, 'SP_MACHINE_ID': machine, 'SP_TIMEOUT': '60',
            'SP_WRAPPER_LOGLEVEL': 'normal', 'SP_WRAPPER_LOGDIR': workdir, 'SP_ALLOW_OVERLAP': 'false',
            'SP_LOCKFILE': os.path.join(workdir, 'demo.lock'),
        }
        print('$ SP_COMMAND=%r %s' % (command, wrapper))
        started = time.monotonic()
        launch = subprocess.run([wrapper], env=env, capture_output=True, text=True, timeout=30)
        print('launcher exit %d after %.1f ms; it printed:' % (launch.returncode, (time.monotonic() - started) * 1000))
        for line in (launch.stdout + launch.stderr).splitlines():
            print('    ' + line)
        result = ask(cmd='wait_result', name=job, machine=machine, timeout=60)
        print('\nWhat the Saltpeter server recorded for %s on %s:' % (instance, machine))
        print('    retcode:         %r' % result.get('retcode'))
        print('    wrapper_version: %s' % result.get('wrapper_version'))
        print('    starttime:       %s' % result.get('starttime'))
        print('    endtime:         %s' % result.get('endtime'))
        print('    output (ret):')
        for line in result.get('ret', '').splitlines():
            print('        | ' + line)
        log = os.path.join(workdir, job + '.log')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the wrapper's last line follows the server's ACK
            if os.path.exists(log) and 'wrapper done' in open(log).read():
                break
            time.sleep(0.05)
        if os.path.exists(log):
            print('\nThe wrapper\'s log (%s):' % log)
            with open(log) as f:
                for line in f:
                    print('    ' + line.rstrip('\n'))
        if not result.get('ok') or result.get('retcode') != 3:
            print('\ndemo FAILED: the server did not record the expected result')
            return 1
        return 0
    finally:
        endpoint.kill()


if __name__ == '__main__':
    sys.exit(main())
