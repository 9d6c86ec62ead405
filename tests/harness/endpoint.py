#!/usr/bin/env python3
"""The real Saltpeter machines endpoint, driven over stdin/stdout for tests.

Runs `saltpeter.machines_endpoint.WebSocketJobServer` (the real code, from the
installed `saltpeter` package) in an asyncio loop on a background thread, plus
a stand-in for Saltpeter's job process: one thread per job instance that drains
`state_update_queues[instance]` and writes `state[job]['results'][machine]`
the way `saltpeter.main.processresults_websocket` does (the endpoint's
`complete` handler waits for that `endtime`).

Protocol: one JSON object per line on stdin, one JSON reply per line on
stdout (stdout carries nothing else; the endpoint's prints go to stderr).
The first line printed is {"event": "ready", "port": P}.

Commands (each may carry "id", echoed back):
  add_job      name, instance, machines      register a running instance
  result       name, machine                 the current result
  wait_result  name, machine, timeout        block until it has an endtime
  kill         name, instance, machine       queue the server's kill command
  connections                                the endpoint's registered sockets:
                                             {"<instance>:<machine>": id of its socket}
  records                                    every (job, machine) with a result
  stop_endpoint                              close the endpoint and its sockets
  start_endpoint                             a new endpoint object, same port and state
  quit
It exits when stdin closes.
"""

import argparse
import asyncio
import contextlib
import json
import queue
import socket
import sys
import threading
import time
from datetime import datetime, timezone

# The endpoint prints to stdout; keep stdout for our protocol.
PROTOCOL_OUT = sys.stdout
sys.stdout = sys.stderr

from saltpeter.machines_endpoint import WebSocketJobServer  # noqa: E402
import websockets  # noqa: E402


class Result:
    """One machine's result, as processresults_websocket keeps it."""

    def __init__(self):
        self.chunks = []  # 'ret' as a list: no O(n^2) concatenation for big outputs
        self.retcode = ''
        self.starttime = None
        self.endtime = ''
        self.wrapper_version = None
        self.heartbeats = []
        self.outputs = 0
        self.starts = 0
        self.completes = 0

    def as_dict(self):
        return {
            'ret': ''.join(self.chunks),
            'retcode': None if self.retcode == '' else self.retcode,
            'starttime': None if self.starttime is None else str(self.starttime),
            'endtime': None if self.endtime in ('', None) else str(self.endtime),
            'wrapper_version': self.wrapper_version,
            'heartbeats': self.heartbeats,
            'outputs': self.outputs,
            'starts': self.starts,
            'completes': self.completes,
        }


class ResultsView(dict):
    """state[job]['results']: the endpoint reads results[machine]['endtime']."""


class Harness:
    def __init__(self, port):
        self.port = port
        self.state = {}
        self.running = {}
        self.queues = {}
        self.commands = []
        self.results = {}  # (job, machine) -> Result
        self.lock = threading.Condition()
        self.loop = None
        self.server = None
        self.endpoint_task = None

    # --- the stand-in for Saltpeter's job process -------------------------
    def result(self, job, machine):
        key = (job, machine)
        if key not in self.results:
            self.results[key] = Result()
        return self.results[key]

    def publish(self, job, machine, res):
        # What the endpoint's complete handler polls for.
        self.state[job]['results'][machine] = {'endtime': res.endtime, 'retcode': res.retcode}

    def standin(self, job, instance):
        q = self.queues[instance]
        while True:
            msg = q.get()
            kind = msg.get('type')
            machine = msg.get('machine')
            with self.lock:
                res = self.result(job, machine)
                ts = msg.get('timestamp')
                if kind == 'start':
                    # processresults_websocket resets 'ret' on start.
                    res.chunks = []
                    res.starttime = ts
                    res.retcode = ''
                    res.endtime = ''
                    res.wrapper_version = msg.get('wrapper_version', 'unknown')
                    res.starts += 1
                elif kind == 'heartbeat':
                    res.heartbeats.append(time.time())
                elif kind == 'output':
                    res.chunks.append(msg.get('data', ''))
                    res.outputs += 1
                elif kind == 'complete':
                    res.retcode = msg.get('retcode')
                    res.endtime = ts
                    res.completes += 1
                elif kind == 'error':
                    res.chunks = [f"Wrapper error: {msg.get('error')}"]
                    res.retcode = 255
                    res.endtime = ts
                elif kind == 'force_kill':
                    if res.endtime in ('', None):
                        res.endtime = datetime.now(timezone.utc)
                        res.retcode = 143
                        res.chunks.append("\n[Job terminated by user request - grace period expired after 30s]\n")
                self.publish(job, machine, res)
                self.lock.notify_all()

    def add_job(self, name, instance, machines):
        with self.lock:
            self.state.setdefault(name, {'results': ResultsView()})
            self.running[instance] = {'name': name, 'machines': list(machines)}
            if instance not in self.queues:
                self.queues[instance] = queue.Queue()
                threading.Thread(target=self.standin, args=(name, instance), daemon=True).start()

    # --- the endpoint -----------------------------------------------------
    def start_loop(self):
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait()

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        endpoint = WebSocketJobServer(
            host='127.0.0.1', port=self.port, state=self.state, running=self.running,
            commands=self.commands, state_update_queues=self.queues)
        # What WebSocketJobServer.start_server does, kept open-ended so the
        # test can stop it: the same handler and settings.
        self.server = await websockets.serve(
            endpoint.handle_client, '127.0.0.1', self.port,
            max_size=None, max_queue=1024, write_limit=2 ** 20)
        self.endpoint = endpoint
        endpoint.command_check_task = asyncio.ensure_future(endpoint.check_commands())

    async def _stop(self):
        if self.server is None:
            return
        self.endpoint.command_check_task.cancel()
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 10)
        self.server = None

    def start_endpoint(self):
        self.call(self._start())

    def stop_endpoint(self):
        self.call(self._stop())

    def wait_result(self, job, machine, timeout):
        deadline = time.time() + timeout
        with self.lock:
            while True:
                res = self.result(job, machine)
                if res.endtime not in ('', None):
                    return True, res.as_dict()
                left = deadline - time.time()
                if left <= 0:
                    return False, res.as_dict()
                self.lock.wait(left)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--no-endpoint', action='store_true')
    args = parser.parse_args()
    harness = Harness(args.port or free_port())
    harness.start_loop()
    if not args.no_endpoint:
        harness.start_endpoint()

    def reply(obj):
        PROTOCOL_OUT.write(json.dumps(obj) + '\n')
        PROTOCOL_OUT.flush()

    reply({'event': 'ready', 'port': harness.port})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get('cmd')
            out = {'id': req.get('id'), 'ok': True}
            if cmd == 'add_job':
                harness.add_job(req['name'], req['instance'], req.get('machines', []))
            elif cmd == 'result':
                with harness.lock:
                    out.update(harness.result(req['name'], req['machine']).as_dict())
            elif cmd == 'wait_result':
                ok, res = harness.wait_result(req['name'], req['machine'], float(req.get('timeout', 60)))
                out.update(res)
                if not ok:
                    out.update(ok=False, error='timeout')
            elif cmd == 'kill':
                harness.commands.append({'killmachine': {
                    'job_instance': req['instance'], 'machine': req['machine'], 'cron': req['name']}})
            elif cmd == 'connections':
                endpoint = getattr(harness, 'endpoint', None)
                registered = dict(endpoint.connections) if endpoint else {}
                out['connections'] = {key: id(conn['websocket']) for key, conn in registered.items()}
            elif cmd == 'records':
                with harness.lock:
                    out['records'] = sorted(list(key) for key in harness.results)
            elif cmd == 'stop_endpoint':
                harness.stop_endpoint()
            elif cmd == 'start_endpoint':
                harness.start_endpoint()
            elif cmd == 'quit':
                reply(out)
                break
            else:
                out.update(ok=False, error=f'unknown command {cmd!r}')
        except Exception as e:  # report, keep serving
            out = {'id': None, 'ok': False, 'error': f'{type(e).__name__}: {e}'}
        reply(out)
    sys.stderr.flush()
    import os
    os._exit(0)


if __name__ == '__main__':
    main()
