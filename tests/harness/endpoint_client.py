"""The real Saltpeter endpoint (endpoint.py) as a child process, for test
scripts: start it, send it commands, stop it.

    with EndpointClient(workdir) as endpoint:
        endpoint.ask(cmd='add_job', name=job, instance=instance, machines=[machine])
        ... run sp_wrapper with SP_WEBSOCKET_URL=endpoint.url ...
        result = endpoint.ask(cmd='wait_result', name=job, machine=machine, timeout=60)

The endpoint's own output goes to <workdir>/endpoint.err.
"""

import json
import os
import subprocess
import sys

ENDPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'endpoint.py')


class EndpointClient:
    def __init__(self, workdir):
        with open(os.path.join(workdir, 'endpoint.err'), 'w') as err:
            self.process = subprocess.Popen([sys.executable, ENDPOINT], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, text=True)
        self.port = json.loads(self.process.stdout.readline())['port']
        self.url = 'ws://127.0.0.1:%d' % self.port

    def ask(self, **request):
        """One command (endpoint.py's docstring lists them), one JSON reply."""
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.kill()
        self.process.wait()
