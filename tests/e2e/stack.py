"""tests/e2e/stack.py: the real stack on one machine, for the end-to-end suite
and the cmd.run_all bench: a salt-master and a salt-minion (salt 3008.5) on
127.0.0.1, the Saltpeter server (0.9.32) with its UI WebSocket, and the agent
under test as the wrapper Saltpeter launches through Salt.

Everything lives under one temporary directory (configs, keys, caches,
sockets, pid files, logs); every port is a free one picked at start. Each
daemon runs in its own process group; stop() ends those groups, and the agent
daemons (which detach into their own sessions) with their jobs, found by their
executable or command line under the temporary directory. Only processes this
module started are touched.

The minion's id is set in its config (in minion.d/, overriding a decoy in the
main file, as Salt reads them) and differs from the host name; nothing sets
SP_MACHINE_ID, so the agent must find the id itself (issue 13).

The master serves salt:// from srv/salt in the temporary directory (the
deploy tests' states and packages), and the minion's apt reads its sources
and lists from apt/ there (APT_CONFIG), never the host's.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import yaml
from websockets.sync.client import connect

# Never fires (CronTab years end at 2099): crons run on demand from the UI.
NEVER = {'sec': 0, 'min': 0, 'hour': 0, 'dom': 1, 'mon': 1, 'dow': '*', 'year': 2099, 'utc': True}


def free_ports(count):
    """Distinct free ports on 127.0.0.1 (held open together, then released)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(('127.0.0.1', 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def wait_until(what, check, timeout, interval=0.2):
    """Poll check() until it returns something truthy; fail after timeout s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the condition is not met yet (e.g. port closed)
            last_error = e
        time.sleep(interval)
    raise TimeoutError('%s: not within %.0f s%s' % (
        what, timeout, ' (last error: %r)' % last_error if last_error else ''))


class Stack:
    def __init__(self, wrapper, venv_bin, python_wrapper=None):
        self.venv_bin = os.path.abspath(venv_bin)
        self.root = tempfile.mkdtemp(prefix='sp_e2e_')
        self.conf = os.path.join(self.root, 'salt')          # SALT_CONFIG_DIR
        self.sp_conf = os.path.join(self.root, 'saltpeter')  # saltpeter -c
        self.sp_log = os.path.join(self.root, 'saltpeter-log')
        self.agent_log = os.path.join(self.root, 'agent-log')
        self.bin = os.path.join(self.root, 'bin')
        # The master's file server (salt://), for the deploy tests' states.
        self.file_root = os.path.join(self.root, 'srv', 'salt')
        for d in (self.conf, self.sp_conf, self.sp_log, self.bin, os.path.join(self.root, 'log'), self.file_root):
            os.makedirs(d)
        # A copy, so every agent process is recognisable by its executable.
        self.wrapper = os.path.join(self.bin, 'sp_wrapper')
        shutil.copy2(wrapper, self.wrapper)
        self.python_wrapper = None
        if python_wrapper:
            # The Python reference wrapper, run by the e2e venv's interpreter.
            self.python_wrapper = os.path.join(self.bin, 'sp_wrapper.py')
            with open(python_wrapper) as src, open(self.python_wrapper, 'w') as dst:
                source = src.read()
                if source.startswith('#!'):
                    source = source.split('\n', 1)[1]
                dst.write('#!%s\n%s' % (os.path.join(self.venv_bin, 'python'), source))
            os.chmod(self.python_wrapper, 0o755)
        self.minion_id = 'e2e-minion-' + secrets.token_hex(4)
        (self.publish_port, self.ret_port, self.api_port, self.machines_port) = free_ports(4)
        self.processes = {}
        self.env = dict(os.environ)
        self.env.pop('SP_MACHINE_ID', None)
        self.env.pop('SALT_MINION_CONFIG', None)
        self.env.pop('SALT_MASTER_CONFIG', None)
        self.env['SALT_CONFIG_DIR'] = self.conf
        self.env['PATH'] = self.venv_bin + ':' + self.env.get('PATH', '/usr/bin:/bin')
        self.env['PYTHONUNBUFFERED'] = '1'
        self.env['APT_CONFIG'] = self.write_apt_config()

    # ---------------------------------------------------------------- setup
    def write_apt_config(self):
        """apt as the minion runs it (APT_CONFIG): its sources, lists and cache
        in the temporary directory, so a state's `apt-get update` reads only
        the deploy tests' local repository (apt/sources.list, empty until
        they write it) and the host's apt setup is neither read nor changed.
        Installs still go into the host's dpkg database."""
        apt = os.path.join(self.root, 'apt')
        for d in ('sources.list.d', 'lists/partial', 'cache/archives/partial'):
            os.makedirs(os.path.join(apt, d))
        open(os.path.join(apt, 'sources.list'), 'w').close()
        path = os.path.join(apt, 'apt.conf')
        with open(path, 'w') as f:
            f.write('// written by tests/e2e/stack.py\n')
            for key, value in (('Dir::Etc::SourceList', os.path.join(apt, 'sources.list')),
                               ('Dir::Etc::SourceParts', os.path.join(apt, 'sources.list.d')),
                               ('Dir::State::Lists', os.path.join(apt, 'lists')),
                               ('Dir::Cache', os.path.join(apt, 'cache')),
                               # The repository is in this 0700 directory.
                               ('APT::Sandbox::User', 'root'),
                               # Wait for another apt or dpkg instead of failing.
                               ('DPkg::Lock::Timeout', '120')):
                f.write('%s "%s";\n' % (key, value))
        return path

    def write_salt_configs(self):
        def state(kind):
            return {
                'root_dir': self.root,
                'pki_dir': os.path.join(self.root, 'pki', kind),
                'cachedir': os.path.join(self.root, 'cache', kind),
                'sock_dir': os.path.join(self.root, 'sock', kind),
                'pidfile': os.path.join(self.root, 'run', kind + '.pid'),
                'log_file': os.path.join(self.root, 'log', kind + '.log'),
                # Millisecond timestamps: the bench reads cmd.run_all's time here.
                'log_fmt_logfile': '%(asctime)s.%(msecs)03d [%(name)s][%(levelname)s][%(process)d] %(message)s',
                'log_datefmt_logfile': '%Y-%m-%d %H:%M:%S',
                'user': 'root',
            }
        master = state('master')
        master.update({
            'interface': '127.0.0.1', 'publish_port': self.publish_port, 'ret_port': self.ret_port,
            'auto_accept': True, 'worker_threads': 2, 'log_level_logfile': 'info',
            'file_roots': {'base': [self.file_root]},
        })
        minion = state('minion')
        minion.update({
            # Overridden by minion.d/ below, as Salt reads it: the agent must
            # follow the same order to report the id the master knows.
            'id': 'decoy-' + self.minion_id,
            'master': '127.0.0.1', 'master_port': self.ret_port, 'publish_port': self.publish_port,
            'acceptance_wait_time': 1, 'random_reauth_delay': 0,
            'enable_fqdns_grains': False,  # a DNS lookup per address at start
            'log_level_logfile': 'debug',
        })
        os.makedirs(os.path.join(self.conf, 'minion.d'))
        for name, data in (('master', master), ('minion', minion),
                           ('minion.d/50-id.conf', {'id': self.minion_id})):
            with open(os.path.join(self.conf, name), 'w') as f:
                f.write('# written by tests/e2e/stack.py\n')
                yaml.safe_dump(data, f, default_flow_style=False)

    def write_saltpeter_config(self):
        self.write_crons('saltpeter', {'saltpeter_config': {
            'logdir': self.sp_log,
            'api_ws': True, 'api_ws_port': self.api_port, 'api_ws_bind_addr': '127.0.0.1',
            'machines_ws_port': self.machines_port, 'machines_ws_bind_addr': '127.0.0.1',
            'default_saltpeter_server_host': '127.0.0.1',
            'default_wrapper_path': self.wrapper,
            'default_wrapper_logdir': self.agent_log,
            'default_wrapper_loglevel': 'normal',
        }})

    def cron(self, command, **fields):
        """A cron for our minion; on demand only unless time fields are given."""
        data = dict(NEVER)
        data.update({'targets': self.minion_id, 'target_type': 'glob', 'command': command})
        data.update(fields)
        return data

    def write_crons(self, group, crons):
        """Write (or replace) <group>.yaml; Saltpeter rereads its config directory
        about every 50 ms. Written by rename so it never reads half a file."""
        path = os.path.join(self.sp_conf, group + '.yaml')
        for name, data in crons.items():
            if name != 'saltpeter_config' and 'lockfile' not in data:
                # Not /tmp/sp_wrapper_<job>.lock: two suites on one machine
                # would refuse each other's runs as overlaps.
                data['lockfile'] = os.path.join(self.root, 'locks', name + '.lock')
        with open(path + '.tmp', 'w') as f:
            yaml.safe_dump(crons, f, default_flow_style=False)
        os.rename(path + '.tmp', path)
        return path

    def spawn(self, name, argv):
        out = open(os.path.join(self.root, 'log', name + '.out'), 'w')
        self.processes[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.root, start_new_session=True)
        out.close()

    def start(self, crons=None):
        self.write_salt_configs()
        self.write_saltpeter_config()
        if crons:
            self.write_crons('e2e', crons)
        # No -c: SALT_CONFIG_DIR alone tells Salt (and, through the minion's
        # environment, the agent) where the config is.
        self.spawn('salt-master', [os.path.join(self.venv_bin, 'salt-master'), '-l', 'warning'])
        self.spawn('salt-minion', [os.path.join(self.venv_bin, 'salt-minion'), '-l', 'warning'])
        wait_until('the minion %s answering test.ping' % self.minion_id, self.ping, 180, interval=1)
        self.spawn('saltpeter', [os.path.join(self.venv_bin, 'saltpeter'), '-c', self.sp_conf])
        for port in (self.api_port, self.machines_port):
            wait_until('Saltpeter listening on %d' % port,
                       lambda: socket.create_connection(('127.0.0.1', port), 1).close() or True, 60)

    def ping(self):
        self.check_alive()
        result = subprocess.run(
            [os.path.join(self.venv_bin, 'salt'), '--out=json', '--static', '-t', '5',
             self.minion_id, 'test.ping'],
            env=self.env, capture_output=True, text=True, timeout=60)
        try:
            return json.loads(result.stdout or '{}').get(self.minion_id) is True
        except ValueError:
            return False

    def salt(self, *args):
        """`salt <our minion> <args...>` from the master, as an operator types
        it; returns what the minion returned (JSON output)."""
        self.check_alive()
        result = subprocess.run(
            [os.path.join(self.venv_bin, 'salt'), '--out=json', '--static', '-t', '30',
             self.minion_id] + list(args),
            env=self.env, capture_output=True, text=True, timeout=90)
        try:
            return json.loads(result.stdout)[self.minion_id]
        except (ValueError, KeyError):
            raise AssertionError('salt %s: %r %r' % (' '.join(args), result.stdout, result.stderr))

    def check_alive(self):
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError('%s exited with %s; its output:\n%s' % (
                    name, process.returncode, self.tail(os.path.join('log', name + '.out'))))

    def tail(self, relative, lines=40):
        try:
            with open(os.path.join(self.root, relative), errors='replace') as f:
                return ''.join(f.readlines()[-lines:])
        except OSError as e:
            return '(%s)' % e

    # ------------------------------------------------------------- teardown
    def our_strays(self):
        """Agent daemons (and Python wrappers) started from this stack."""
        found = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                exe = os.readlink('/proc/%s/exe' % entry)
            except OSError:
                exe = ''
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    cmdline = f.read().decode(errors='replace')
            except OSError:
                continue
            if exe.startswith(self.root) or self.bin in cmdline:
                found.append(int(entry))
        return found

    def children_of(self, pid):
        children = []
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open('/proc/%s/stat' % entry) as f:
                        fields = f.read().rsplit(')', 1)[1].split()
                    if int(fields[1]) == pid:
                        children.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return children

    def stop(self):
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for name, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stragglers in the group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill_agents(self.our_strays())

    def kill_agents(self, pids):
        """SIGKILL each agent process and its children's process groups
        (the job runs in its own)."""
        for pid in pids:
            for child in self.children_of(pid):
                try:
                    os.killpg(child, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ the UI side
    def ui(self, message):
        """Send one message to Saltpeter's UI WebSocket, as the web UI does."""
        with connect('ws://127.0.0.1:%d/ws' % self.api_port, open_timeout=10, max_size=None) as ws:
            ws.send(json.dumps(message))

    def details(self, cron):
        """What Saltpeter stored for cron, as its UI receives it: the `details`
        message, with each machine's `ret` rebuilt from the `output_chunk`s."""
        with connect('ws://127.0.0.1:%d/ws' % self.api_port, open_timeout=10,
                     max_size=None, close_timeout=1) as ws:
            ws.send(json.dumps({'subscribe': cron}))
            output = {}
            deadline = time.monotonic() + 20
            while True:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if message.get('cron') != cron:
                    continue
                if message.get('type') == 'output_chunk':
                    text = output.get(message['machine'], '')
                    output[message['machine']] = text[:message['position']] + message['chunk']
                elif message.get('type') == 'details':
                    data = message['data']
                    results = data.get('results', {})
                    for machine, result in results.items():
                        result['ret'] = output.get(machine, '')
                    # The UI endpoint streams the chunks from one read of the
                    # state and builds `details` from a second read: a result
                    # stored in between arrives with its end time but without
                    # its text. Its next broadcast (every 2 s) sends the text.
                    if all(len(r['ret']) == r.get('output_length', 0) for r in results.values()):
                        return data

    def run(self, cron):
        """Fire cron now (the UI's Run button); returns the time it was asked."""
        asked = time.time()
        self.ui({'run': cron})
        return asked

    def wait_finished(self, cron, since, timeout):
        """The stored result of the run of cron that started at or after
        `since` (epoch s), once every machine in it has an end time."""
        def finished():
            data = self.details(cron)
            last_run = data.get('last_run')
            results = data.get('results') or {}
            if not last_run or parse_time(last_run) < since - 1 or not results:
                return None
            if all(r.get('endtime') not in (None, '') for r in results.values()):
                return data
            return None
        return wait_until('a finished run of %s' % cron, finished, timeout, interval=0.5)

    def cron_log(self, cron):
        """Saltpeter's own per-cron log (logdir/<cron>.log)."""
        try:
            with open(os.path.join(self.sp_log, cron + '.log'), errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def agent_log_text(self, cron):
        try:
            with open(os.path.join(self.agent_log, cron + '.log'), errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''


def parse_time(text):
    """Saltpeter's isoformat times, as epoch seconds."""
    from datetime import datetime, timezone
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
