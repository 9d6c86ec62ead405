#!/usr/bin/env python3
"""Log rotation loses nothing: drive the real logrotate, with the package's
own /etc/logrotate.d/saltpeter-agent and reopen-logs helper, while several
sp_wrapper agents write their logs (tests/packaging/check.sh runs this).

usage: logrotate_test.py UNPACKED_DEB_ROOT

Only the paths in the configuration are changed (the log directory becomes a
temp dir, the helper the unpacked one); logrotate keeps its state file in the
temp dir too. Five agents run jobs against the real endpoint: two instances
of one job share one log file, three more jobs have a log each, and two of
the agents start after the first rotations. With SP_WRAPPER_LOGLEVEL=debug
and SP_OUTPUT_INTERVAL_MS=0 each agent logs a numbered line
("sending output seq N") for every read of its job's output. The test forces
a rotation each time the live logs have grown, up to ROTATIONS times, then
reads every file (*.log, *.log.N, *.log.N.gz) and asserts, per agent: each
seq from 0 up exactly once, the lifecycle lines once each, no torn line, and
that an agent alive across a rotation got SIGHUP and went on in the new file.

Then weeks of it (weeks()): WEEKS * 7 days, each day runs of the real agent
against the endpoint whose output passes SP_OUTPUT_MAX_MB (so each writes a
.leftout file, and its log), two of them overlapping, then one forced
rotation; in two log directories: one with the package's configuration, one
with it plus the *.leftout stanza packages before issue 24 shipped (a host
that kept a locally edited conffile: logrotate renames left-out files
there). After every day, the count and total size of each job's logs and
left-out files must be within their bounds (rotate 8; SP_LEFTOUT_JOB_FILES,
SP_LEFTOUT_JOB_MAX_MB), though every run wrote a new file.

First, the helper's aim, with stand-in processes named sp_wrapper that hold
a file of the log directory open: one with SIGHUP at its default action (a
launcher: it must survive), one that blocks SIGHUP (a daemon: it must get
it, pending) and that one's child, which inherited the mask (the job between
fork and exec: it must not get it); and a daemon stand-in with no file there
(another log directory: it must not get it).
"""

import collections
import glob
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'harness'))
from endpoint_client import EndpointClient  # noqa: E402

PACKAGED_LOGDIR = '/var/log/sp_wrapper'
PACKAGED_HELPER = '/usr/libexec/saltpeter-agent/reopen-logs'
# Fewer than the configuration's `rotate 8`, so logrotate deletes nothing.
ROTATIONS = 6
LINES_PER_JOB = 300
# A job that writes one line every 10 ms: about 3 s plus fork costs.
COMMAND = 'i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i + 1)); sleep 0.01; done' % LINES_PER_JOB
# (job, machine): two instances of job "shared" write one file.
FIRST_WAVE = [('shared', 'm1'), ('shared', 'm2'), ('solo-b', 'm1')]
SECOND_WAVE = [('solo-c', 'm1'), ('solo-d', 'm1')]
LINE_SHAPE = re.compile(r'^\[(?P<instance>[^\]]+)\] \d{4}-\d\d-\d\dT\S+ \[(INFO|DEBUG|WARN|ERROR)\] .*$')


# Weeks of daily forced rotations, each day's runs before its rotation.
WEEKS = 3
# About 1.5 MB per run: 768 KiB go to the server, the rest to <job>.<instance>.leftout.
BIG_COMMAND = ("awk 'BEGIN { for (i = 0; i < 16000; i++) printf \"%07d %s\\n\", i, "
               "\"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890\" }'")
# Per job: the agent's bounds on its left-out files (the count binds for
# "nightly", the size for "hourly": two files of ~0.7 MB do not leave the
# 1 MiB its next run reserves within 2 MiB).
WEEK_JOBS = {
    'nightly': {'SP_LEFTOUT_MAX_MB': '1', 'SP_LEFTOUT_JOB_FILES': '8'},
    'hourly': {'SP_LEFTOUT_MAX_MB': '1', 'SP_LEFTOUT_JOB_MAX_MB': '2'},
}
# The package's `rotate 8`: the live log and eight old ones.
LOG_GENERATIONS = 9
# What each day's log may hold, generously (a run logs ~1.5 KB).
LOG_DAY_BYTES = 64 * 1024
# The stanza for *.leftout that packages shipped before issue 24.
OLD_LEFTOUT_STANZA = """
/var/log/sp_wrapper/*.leftout {
    weekly
    rotate 4
    missingok
    notifempty
    compress
    delaycompress
    nocreate
}
"""


def wait_until(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %d s waiting for %s' % (seconds, what))
        time.sleep(0.05)


def read_all(logdir):
    """Every line of every log file, as {instance: [(file, line)]}."""
    by_instance = collections.defaultdict(list)
    torn = []
    for path in sorted(glob.glob(os.path.join(logdir, '*.log*'))):
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
            text = f.read()
        if text and not text.endswith('\n'):
            torn.append('%s does not end with a newline' % path)
        for line in text.splitlines():
            shape = LINE_SHAPE.match(line)
            if not shape:
                torn.append('%s: %r' % (os.path.basename(path), line))
                continue
            by_instance[shape.group('instance')].append((os.path.basename(path), line))
    return by_instance, torn


# A stand-in: named sp_wrapper, holding argv[2] open, optionally blocking
# SIGHUP with a forked child (which inherits name, mask and the file);
# prints its pids, then sleeps.
STAND_IN = r"""
import ctypes, os, signal, sys, time
ctypes.CDLL(None).prctl(15, b"sp_wrapper", 0, 0, 0)  # PR_SET_NAME
held = open(sys.argv[2], "a")
if sys.argv[1] == "block":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(os.getpid(), child, flush=True)
else:
    print(os.getpid(), flush=True)
time.sleep(60)
"""


def pending_hup(pid):
    """Whether SIGHUP is pending for the process (ShdPnd, bit 0)."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('ShdPnd:'):
                return int(line.split()[1], 16) & 1 == 1
    raise AssertionError('no ShdPnd line for %d' % pid)


def check_helper_aim(helper, logdir, work):
    held = os.path.join(logdir, 'stand-in.log')
    elsewhere = os.path.join(work, 'elsewhere.log')

    def stand_in(kind, path):
        return subprocess.Popen([sys.executable, '-c', STAND_IN, kind, path], stdout=subprocess.PIPE, text=True)

    launcher, daemon, other = stand_in('default', held), stand_in('block', held), stand_in('block', elsewhere)
    child_pid = None
    try:
        launcher.stdout.readline()
        daemon_pid, child_pid = map(int, daemon.stdout.readline().split())
        other_pid = int(other.stdout.readline().split()[0])
        helped = subprocess.run([helper, logdir], capture_output=True, text=True, timeout=60)
        failures = []
        if helped.returncode != 0:
            failures.append('reopen-logs exited %d: %s' % (helped.returncode, helped.stderr))
        if launcher.poll() is not None:
            failures.append('reopen-logs killed an sp_wrapper with SIGHUP at its default action (a launcher)')
        if not pending_hup(daemon_pid):
            failures.append('reopen-logs did not signal an sp_wrapper that blocks SIGHUP (a daemon)')
        if pending_hup(child_pid):
            failures.append("reopen-logs signalled a daemon's child that inherited its mask (the job before exec)")
        if pending_hup(other_pid):
            failures.append('reopen-logs signalled a daemon with no file in %s' % logdir)
        if not failures:
            print('logrotate_test.py: reopen-logs signalled the daemon stand-in only (not the launcher,'
                  ' the child, or a daemon of another directory)')
        return failures
    finally:
        for process in (launcher, daemon, other):
            process.kill()
            process.wait()
        if child_pid:
            try:
                os.kill(child_pid, 9)
            except ProcessLookupError:
                pass
        os.unlink(held)


def main():
    root = os.path.abspath(sys.argv[1])
    wrapper = os.path.join(root, 'usr/bin/sp_wrapper')
    helper = os.path.join(root, PACKAGED_HELPER.lstrip('/'))
    with open(os.path.join(root, 'etc/logrotate.d/saltpeter-agent')) as f:
        packaged = f.read()
    work = tempfile.mkdtemp(prefix='sp_logrotate_')
    logdir = os.path.join(work, 'logs')
    os.mkdir(logdir, 0o750)
    config = packaged.replace(PACKAGED_HELPER, helper).replace(PACKAGED_LOGDIR, logdir)
    aim_failures = check_helper_aim(helper, logdir, work)
    for failure in aim_failures:
        print('logrotate_test.py: FAIL: ' + failure)
    if aim_failures:
        return 1
    if logdir not in config or helper not in config:
        print('logrotate_test.py: FAIL: the packaged configuration no longer names %s and %s' % (
            PACKAGED_LOGDIR, PACKAGED_HELPER))
        return 1
    config_path = os.path.join(work, 'logrotate.conf')
    with open(config_path, 'w') as f:
        f.write(config)

    if '*.leftout' in packaged:
        print('logrotate_test.py: FAIL: the packaged configuration rotates *.leftout files: each name is written'
              ' once, so logrotate would rename each once and never bound them (the agent does)')
        return 1

    with EndpointClient(work) as endpoint:
        failed = run(wrapper, config_path, logdir, work, endpoint)
        failed = weeks(wrapper, config, logdir, work, endpoint) or failed
    if failed:
        print('%s: kept %s (logs)' % (os.path.basename(__file__), work))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return failed


def run(wrapper, config_path, logdir, work, endpoint):
    instances = {}  # (job, machine) -> instance

    def launch(job, machine):
        instance = '%s-%s_%d' % (job, machine, time.time_ns())
        instances[(job, machine)] = instance
        endpoint.ask(cmd='add_job', name=job, instance=instance, machines=[machine])
        env = {
            'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
            'SP_WEBSOCKET_URL': endpoint.url, 'SP_JOB_NAME': job,
            'SP_JOB_INSTANCE': instance, 'SP_COMMAND': COMMAND, 'SP_MACHINE_ID': machine,
            'SP_TIMEOUT': '120', 'SP_WRAPPER_LOGLEVEL': 'debug', 'SP_WRAPPER_LOGDIR': logdir,
            'SP_OUTPUT_INTERVAL_MS': '0', 'SP_ALLOW_OVERLAP': 'true',
        }
        launched = subprocess.run([wrapper], env=env, capture_output=True, text=True, timeout=30)
        if launched.returncode != 0:
            raise AssertionError('launch of %s failed: %r' % (instance, launched.stderr))

    def live_lines():
        total = 0
        for path in glob.glob(os.path.join(logdir, '*.log')):
            with open(path, 'rb') as f:
                total += f.read().count(b'\n')
        return total

    def all_done():
        text = ''.join(line for _, lines in read_all(logdir)[0].items() for _, line in lines
                       if 'wrapper done' in line)
        return all(instance in text for instance in instances.values())

    for job, machine in FIRST_WAVE:
        launch(job, machine)
    rotations = 0
    while rotations < ROTATIONS and not all_done():
        # Rotate only once the live logs hold fresh lines, so each rotation
        # moves lines that agents are still writing.
        wait_until(lambda: live_lines() >= 20 or all_done(), 30, 'agents to write 20 log lines')
        if all_done():
            break
        rotated = subprocess.run(['logrotate', '-f', '-s', os.path.join(work, 'logrotate.state'), config_path],
                                 capture_output=True, text=True, timeout=60)
        if rotated.returncode != 0 or rotated.stderr.strip():
            raise AssertionError('logrotate failed (%d): %s' % (rotated.returncode, rotated.stderr))
        rotations += 1
        if rotations == 2:
            for job, machine in SECOND_WAVE:
                launch(job, machine)
    wait_until(all_done, 60, 'every agent to log "wrapper done"')

    failures = []
    for (job, machine), instance in instances.items():
        result = endpoint.ask(cmd='wait_result', name=job, machine=machine, timeout=30)
        expected = ''.join('line %d\n' % i for i in range(LINES_PER_JOB))
        if result.get('retcode') != 0 or result.get('ret') != expected:
            failures.append('%s: the server recorded retcode %r and %d bytes, expected 0 and %d lines' % (
                instance, result.get('retcode'), len(result.get('ret') or ''), LINES_PER_JOB))

    by_instance, torn = read_all(logdir)
    failures += ['torn or foreign line: ' + t for t in torn]
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(logdir, '*')))
    print('logrotate_test.py: %d forced rotations; files: %s' % (rotations, ' '.join(files)))
    if rotations < 3:
        failures.append('only %d rotations happened while agents wrote (at least 3 expected)' % rotations)
    for instance in instances.values():
        entries = by_instance.get(instance, [])
        seqs = [int(m.group(1)) for _, line in entries for m in [re.search(r'sending output seq (\d+) ', line)] if m]
        counts = collections.Counter(seqs)
        duplicated = sorted(s for s, n in counts.items() if n > 1)
        missing = sorted(set(range(max(seqs) + 1)) - set(seqs)) if seqs else ['all']
        spread = sorted({name for name, _ in entries})
        lifecycle = {what: sum(what in line for _, line in entries)
                     for what in ('starting job', 'job finished with retcode 0', 'wrapper done')}
        hups = sum('SIGHUP: log file reopened' in line for _, line in entries)
        print('  %s: %d lines, seq 0..%s, in %s; SIGHUP reopens: %d' % (
            instance, len(entries), max(seqs) if seqs else '-', ', '.join(spread), hups))
        if missing or duplicated:
            failures.append('%s: seqs missing %s, duplicated %s' % (instance, missing[:10], duplicated[:10]))
        for what, n in lifecycle.items():
            if n != 1:
                failures.append('%s: %r logged %d times, expected once' % (instance, what, n))
        # An agent that lived through a rotation must have reopened: its
        # lines then continue in a newer file.
        if len(spread) > 1 and hups == 0:
            failures.append('%s: lines in %s but no SIGHUP reopen' % (instance, spread))
    first_wave = [instances[key] for key in FIRST_WAVE]
    if not any(len({name for name, _ in by_instance.get(i, [])}) > 2 for i in first_wave):
        failures.append('no agent of the first wave wrote across two rotations: the test proved nothing')
    for failure in failures:
        print('logrotate_test.py: FAIL: ' + failure)
    return 1 if failures else 0


def weeks(wrapper, config, logdir, work, endpoint):
    """WEEKS * 7 days of agent runs and daily forced rotations in two
    directories (the module docstring); 0 if every bound held every day."""
    started = time.monotonic()
    dirs = {}  # name -> (log dir, logrotate configuration, state file)
    for name, extra in (('current', ''), ('upgraded', OLD_LEFTOUT_STANZA)):
        directory = os.path.join(work, 'weeks-' + name)
        os.mkdir(directory, 0o750)
        path = os.path.join(work, 'weeks-%s.conf' % name)
        with open(path, 'w') as f:
            f.write((config + extra.replace(PACKAGED_LOGDIR, logdir)).replace(logdir, directory))
        dirs[name] = (directory, path, os.path.join(work, 'weeks-%s.state' % name))
    bounds = {}  # job -> (files, bytes) of its .leftout files
    for job, env in WEEK_JOBS.items():
        per_run = int(env.get('SP_LEFTOUT_MAX_MB', '256'))
        job_mb = int(env.get('SP_LEFTOUT_JOB_MAX_MB', '1024'))
        bounds[job] = (int(env.get('SP_LEFTOUT_JOB_FILES', '8')), min(job_mb, 8 * per_run) << 20)

    def launch(directory, job, machine):
        instance = '%s_%d' % (job, time.time_ns())
        endpoint.ask(cmd='add_job', name=job, instance=instance, machines=[machine])
        env = dict(WEEK_JOBS[job], PATH=os.environ.get('PATH', '/usr/bin:/bin'), SP_WEBSOCKET_URL=endpoint.url,
                   SP_JOB_NAME=job, SP_JOB_INSTANCE=instance, SP_COMMAND=BIG_COMMAND, SP_MACHINE_ID=machine,
                   SP_TIMEOUT='60', SP_WRAPPER_LOGDIR=directory, SP_OUTPUT_MAX_MB='1', SP_ALLOW_OVERLAP='true')
        launched = subprocess.run([wrapper], env=env, capture_output=True, text=True, timeout=30)
        if launched.returncode != 0:
            raise AssertionError('launch of %s failed: %r' % (instance, launched.stderr))
        return instance

    def wait_done(directory, job, instances):
        def done():
            with open(os.path.join(directory, job + '.log'), errors='replace') as f:
                text = f.read()
            return all('[%s] ' % i in text and re.search(r'^\[%s\] .* wrapper done' % re.escape(i), text, re.M)
                       for i in instances)
        wait_until(done, 60, 'runs %s to log "wrapper done"' % ', '.join(instances))

    def files_of(directory, job, kind):
        suffix = r'\.[^.]+\.leftout' if kind == 'leftout' else r'\.log'
        pattern = re.escape(job) + suffix + r'(\.\d+(\.gz)?)?'
        return {n: os.lstat(os.path.join(directory, n)).st_size
                for n in os.listdir(directory) if re.fullmatch(pattern, n)}

    failures = []
    # A bound broken is said once, on the first day it is.
    broken = {}
    runs = collections.Counter()  # job -> runs (each wrote a .leftout file), per directory
    renamed_seen = 0  # .leftout.N files seen in 'upgraded': the old stanza did rename
    most = (0, 0)  # the most files and bytes any directory held at a day's end
    for day in range(1, WEEKS * 7 + 1):
        for name, (directory, conf, state) in dirs.items():
            # Two overlapping runs of one job, then one more of it and one of the other.
            pair = [launch(directory, 'hourly', 'm1'), launch(directory, 'hourly', 'm2')]
            wait_done(directory, 'hourly', pair)
            wait_done(directory, 'hourly', [launch(directory, 'hourly', 'm1')])
            wait_done(directory, 'nightly', [launch(directory, 'nightly', 'm1')])
            runs['hourly'] += 3
            runs['nightly'] += 1
            rotated = subprocess.run(['logrotate', '-f', '-s', state, conf], capture_output=True, text=True, timeout=60)
            if rotated.returncode != 0 or rotated.stderr.strip():
                raise AssertionError('logrotate failed (%d): %s' % (rotated.returncode, rotated.stderr))
            everything = {n: os.lstat(os.path.join(directory, n)).st_size for n in os.listdir(directory)}
            most = (max(most[0], len(everything)), max(most[1], sum(everything.values())))
            known = set()
            for job, (max_files, max_bytes) in bounds.items():
                left = files_of(directory, job, 'leftout')
                logs = files_of(directory, job, 'log')
                known |= set(left) | set(logs)
                if name == 'upgraded':
                    renamed_seen += sum(1 for n in left if not n.endswith('.leftout'))
                log_bytes = LOG_GENERATIONS * LOG_DAY_BYTES
                if len(left) > max_files or sum(left.values()) > max_bytes:
                    broken.setdefault((name, job, 'leftout'), 'day %d, %s: %s keeps %d left-out files, %d bytes'
                                      ' (bound: %d files, %d bytes)' % (day, name, job, len(left), sum(left.values()),
                                                                        max_files, max_bytes))
                if len(logs) > LOG_GENERATIONS or sum(logs.values()) > log_bytes:
                    broken.setdefault((name, job, 'log'), 'day %d, %s: %s has %d log files, %d bytes'
                                      ' (bound: %d files, %d bytes)' % (day, name, job, len(logs), sum(logs.values()),
                                                                        LOG_GENERATIONS, log_bytes))
            if set(everything) - known:
                broken.setdefault((name, 'other'), 'day %d, %s: files nobody expects: %s' % (
                    day, name, sorted(set(everything) - known)))
    failures += broken.values()
    days = WEEKS * 7
    for name, (directory, _, _) in dirs.items():
        held = {n: os.lstat(os.path.join(directory, n)).st_size for n in os.listdir(directory)}
        print('logrotate_test.py: %d days, %s configuration: %d runs wrote a .leftout file each; left %d files,'
              ' %d bytes: %s' % (days, name, sum(runs.values()) // len(dirs), len(held), sum(held.values()),
                                 ' '.join(sorted(held))))
    bound_files = sum(f for f, _ in bounds.values()) + LOG_GENERATIONS * len(bounds)
    bound_bytes = sum(b for _, b in bounds.values()) + LOG_GENERATIONS * LOG_DAY_BYTES * len(bounds)
    print('logrotate_test.py: the most any directory held at a day\'s end: %d files, %d bytes (bound %d files,'
          ' %d bytes); %.1f s' % (most[0], most[1], bound_files, bound_bytes, time.monotonic() - started))
    if most[0] > bound_files or most[1] > bound_bytes:
        failures.append('a directory held %d files, %d bytes at a day\'s end (bound %d files, %d bytes)' % (
            most[0], most[1], bound_files, bound_bytes))
    # The test proves something only if the bounds were reached: more runs
    # than files kept, logs past their generations, renames by the old stanza.
    for job, (max_files, _) in bounds.items():
        if runs[job] // len(dirs) <= max_files:
            failures.append('%s ran only %d times per directory: its bound of %d files was never reached' % (
                job, runs[job] // len(dirs), max_files))
    if days <= LOG_GENERATIONS:
        failures.append('%d days do not pass the %d log generations' % (days, LOG_GENERATIONS))
    if renamed_seen == 0:
        failures.append('the old *.leftout stanza never renamed a left-out file:'
                        ' the "upgraded" directory proved nothing')
    for failure in failures:
        print('logrotate_test.py: FAIL: ' + failure)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
