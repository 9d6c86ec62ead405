#!/usr/bin/env python3
"""./build.sh bench: sp_wrapper and the Python reference wrapper (saltpeter
0.9.30) side by side, on the same jobs, in the same run, alternating.

Runs the REAL Saltpeter endpoint in this process (tests/harness/endpoint.py's
Harness), so a kill frame can be timed from the moment the server sends it.
Prints a table of medians with ratios and the targets of issue 5.

usage: bench.py --wrapper dist/sp_wrapper --python-wrapper .venv/ref0930
                --sink target/release/examples/ack_sink [--runs N] [--quick]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'harness'))
import endpoint  # noqa: E402  (the real endpoint + stand-in job process)
sys.stdout = endpoint.PROTOCOL_OUT  # endpoint.py points stdout at stderr for the server's prints

MACHINE = 'bench-minion'
LINE = '0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrs'  # 64 chars + newline


class Wrapper:
    def __init__(self, name, argv, extra_env):
        self.name, self.argv, self.extra_env = name, argv, extra_env


# Not 0: the Python wrapper 0.9.30 kills the job at once when SP_TIMEOUT is 0
# (a defect in PROTOCOL.md), so both get Saltpeter's default, longer than any job here.
def wrapper_env(w, url, job, instance, command, workdir, timeout=3600):
    env = {
        'PATH': '/usr/local/bin:/usr/bin:/bin',
        'SP_WEBSOCKET_URL': url, 'SP_JOB_NAME': job, 'SP_JOB_INSTANCE': instance,
        'SP_JOB_INSTANCE_NAME': instance, 'SP_COMMAND': command, 'SP_MACHINE_ID': MACHINE,
        'SP_WRAPPER_LOGLEVEL': 'normal', 'SP_WRAPPER_LOGDIR': workdir, 'SP_ALLOW_OVERLAP': 'true',
        'SP_TIMEOUT': str(timeout), 'PYTHONUNBUFFERED': '1',
    }
    env.update(w.extra_env)
    return env


def launch(w, env):
    """Run the launcher as Salt does; seconds from exec until it exited and its
    stdout/stderr closed. posix_spawn and raw pipes keep our own overhead low
    (subprocess.run alone costs ~1.8 ms here); see also launch_baseline()."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2),
               (os.POSIX_SPAWN_CLOSE, out_r), (os.POSIX_SPAWN_CLOSE, err_r)]
    t0 = time.perf_counter()
    pid = os.posix_spawn(w.argv[0], w.argv, env, file_actions=actions)
    os.close(out_w)
    os.close(err_w)
    output = b''
    for fd in (out_r, err_r):
        while chunk := os.read(fd, 65536):
            output += chunk
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f'{w.name} launch failed: {status} {output!r}')
    return elapsed


def launch_baseline(runs=20):
    """The same measurement for /bin/true: the cost of exec and waiting itself."""
    true = Wrapper('true', ['/bin/true'], {})
    return statistics.median(launch(true, {}) for _ in range(runs)) * 1000


def wait_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith('\n'):
                return text.strip()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f'{path} did not appear')


def proc_status_kib(pid, field):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


def proc_cpu_ms(pid):
    """CPU time of every thread of `pid`, in ms, from schedstat (nanoseconds;
    /proc/<pid>/stat counts 10 ms clock ticks, too coarse for a 10 ms target)."""
    total_ns = 0
    for task in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{task}/schedstat') as f:
                total_ns += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that just ended
    return total_ns / 1e6


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix='sp_bench_')
        self.harness = endpoint.Harness(endpoint.free_port())
        self.harness.start_loop()
        self.harness.start_endpoint()
        self.url = f'ws://127.0.0.1:{self.harness.port}'
        self.counter = 0
        self.sink = subprocess.Popen([args.sink], stdout=subprocess.PIPE, text=True)
        self.sink_url = 'ws://127.0.0.1:' + self.sink.stdout.readline().split()[1]

    def close(self):
        self.sink.kill()

    def job(self, prefix):
        # A job name per measurement: results are kept per (job, machine), and
        # a shared name would find the previous run's finished result.
        self.counter += 1
        job = f'{prefix}{self.counter}'
        instance = f'{job}_1'
        self.harness.add_job(job, instance, [MACHINE])
        return job, instance

    def wait_end(self, job, timeout=300):
        ok, result = self.harness.wait_result(job, MACHINE, timeout)
        if not ok:
            raise RuntimeError(f'{job}: no result within {timeout} s')
        return result

    # --- the measurements ------------------------------------------------
    def launch_and_idle(self, w, idle_seconds):
        """Launch latency; then daemon VmHWM and CPU while the job sleeps."""
        job, instance = self.job('idle')
        pidfile = os.path.join(self.workdir, f'{instance}.ppid')
        command = f'echo $PPID > {pidfile}; sleep {idle_seconds}'
        self.last_log = os.path.join(self.workdir, f'{job}.log')
        latency = launch(w, wrapper_env(w, self.url, job, instance, command, self.workdir))
        daemon = int(wait_file(pidfile))
        time.sleep(0.3)  # the daemon connects and settles; the idle window starts after
        cpu0 = proc_cpu_ms(daemon)
        time.sleep(idle_seconds - 0.6)  # the window under measurement
        cpu1 = proc_cpu_ms(daemon)
        hwm = proc_status_kib(daemon, 'VmHWM')
        self.wait_end(job)
        idle_cpu_per_10s = (cpu1 - cpu0) * 10.0 / (idle_seconds - 0.6)
        return latency, hwm, idle_cpu_per_10s

    def kill_to_complete(self, w):
        job, instance = self.job('kill')
        pidfile = os.path.join(self.workdir, f'{instance}.ppid')
        launch(w, wrapper_env(w, self.url, job, instance, f'echo $PPID > {pidfile}; exec sleep 60', self.workdir))
        wait_file(pidfile)
        client = f'{instance}:{MACHINE}'
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = self.harness.result(job, MACHINE)
            conn = self.harness.endpoint.connections.get(client)
            if res.starttime is not None and conn is not None:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f'{w.name}: job never started')
        time.sleep(0.2)
        frame = json.dumps({'type': 'kill', 'job_name': job, 'job_instance': instance, 'machine': MACHINE,
                            'timestamp': '2026-01-01T00:00:00.000000+00:00'})
        t0 = time.perf_counter()
        asyncio.run_coroutine_threadsafe(conn['websocket'].send(frame), self.harness.loop).result(5)
        with self.harness.lock:
            while self.harness.result(job, MACHINE).endtime in ('', None):
                self.harness.lock.wait(10)
        elapsed = time.perf_counter() - t0
        result = self.harness.result(job, MACHINE)
        return elapsed, result.retcode

    def deliver(self, w, size):
        """Launch -> the real server has recorded the end of a job printing `size` bytes."""
        job, instance = self.job('deliver')
        command = f"yes '{LINE}' | head -c {size}"
        t0 = time.perf_counter()
        launch(w, wrapper_env(w, self.url, job, instance, command, self.workdir))
        result = self.wait_end(job, timeout=600)
        elapsed = time.perf_counter() - t0
        if len(''.join(self.harness.result(job, MACHINE).chunks)) != size:
            raise RuntimeError(f'{w.name}: delivered the wrong amount')
        return elapsed

    def sink_throughput(self, w, size):
        job, instance = f'sink', f'sink_{self.counter}'
        self.counter += 1
        command = f"yes '{LINE}' | head -c {size}"
        launch(w, wrapper_env(w, self.sink_url, job, instance, command, self.workdir))
        report = json.loads(self.sink.stdout.readline())
        if report['bytes'] != size:
            raise RuntimeError(f"{w.name}: sink got {report['bytes']} bytes, expected {size}")
        return size / 1e6 / (report['last_ack_s'] - report['first_output_s'])

    def cpu_per_100mb(self, w, size, paced=False):
        """The daemon's own CPU (all its threads, user + system, from
        /proc/<pid>/stat, which keeps the time of threads that ended) to
        deliver `size` bytes to the ACK-everything sink, per 100 MB.
        `paced`: the same bytes as 1 MiB bursts 5 ms apart (a job the link
        keeps up with), else as fast as `yes` writes (a burst, faster than
        the link)."""
        job, instance = 'cpu', f'cpu_{self.counter}'
        self.counter += 1
        pidfile = os.path.join(self.workdir, f'{instance}.ppid')
        if paced:
            mib = os.path.join(self.workdir, 'mib')
            if not os.path.exists(mib):
                text = (LINE + '\n') * ((1 << 20) // (len(LINE) + 1))
                with open(mib, 'w') as f:
                    f.write(text + 'x' * ((1 << 20) - len(text) - 1) + '\n')
            command = (f"echo $PPID > {pidfile}; i=0; while [ $i -lt {size >> 20} ]; do "
                       f"cat {mib}; sleep 0.005; i=$((i+1)); done")
        else:
            command = f"echo $PPID > {pidfile}; yes '{LINE}' | head -c {size}"
        launch(w, wrapper_env(w, self.sink_url, job, instance, command, self.workdir))
        daemon = int(wait_file(pidfile))
        ticks = os.sysconf('SC_CLK_TCK')
        cpu = 0.0
        while True:  # the last reading before the daemon is gone
            try:
                with open(f'/proc/{daemon}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                if fields[0] == 'Z':
                    break
                cpu = (int(fields[11]) + int(fields[12])) * 1000 / ticks
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.005)
        report = json.loads(self.sink.stdout.readline())
        if report['bytes'] != size:
            raise RuntimeError(f"{w.name}: sink got {report['bytes']} bytes, expected {size}")
        return cpu * 100e6 / size

    def raw_rate(self, size):
        rates = {}
        for label, sink in (('to /dev/null', '> /dev/null'), ('through a pipe to cat', '| cat > /dev/null')):
            t0 = time.perf_counter()
            subprocess.run(['/bin/sh', '-c', f"yes '{LINE}' | head -c {size} {sink}"], check=True)
            rates[label] = size / 1e6 / (time.perf_counter() - t0)
        return rates


def median(values):
    return statistics.median(values) if values else float('nan')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--wrapper', required=True)
    parser.add_argument('--python-wrapper', required=True, help='a --target dir with saltpeter==0.9.30')
    parser.add_argument('--sink', required=True)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='1 run, shorter jobs: a smoke test')
    parser.add_argument('--cpu-only', action='store_true',
                        help="only the daemon's CPU per 100 MB delivered (for an A/B of two binaries)")
    parser.add_argument('--baseline', help='with --cpu-only: a second binary, run in pairs with --wrapper '
                        '(alternating which goes first), and the ratio of each pair')
    parser.add_argument('--paced', action='store_true',
                        help='with --cpu-only: the output as 1 MiB bursts 5 ms apart, not one burst')
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    idle = 4 if args.quick else 10
    big = (20 if args.quick else 200) * 1024 * 1024
    python_sink_size = 4 * 1024 * 1024  # at ~133 KB/s, 200 MB would take 25 minutes

    # No SP_OUTPUT_MAX_MB cap: these measure delivering every byte.
    ours = Wrapper('sp_wrapper', [os.path.abspath(args.wrapper)], {'SP_OUTPUT_MAX_MB': '0'})
    if args.cpu_only:
        bench = Bench(args)
        shape = '1 MiB bursts 5 ms apart' if args.paced else 'one burst'
        try:
            if args.baseline:
                base = Wrapper('baseline', [os.path.abspath(args.baseline)], {'SP_OUTPUT_MAX_MB': '0'})
                pairs = []
                for run in range(max(runs, 5)):
                    order = (ours, base) if run % 2 == 0 else (base, ours)
                    cpu = {w.name: bench.cpu_per_100mb(w, big, args.paced) for w in order}
                    pairs.append((cpu[ours.name], cpu[base.name]))
                    print(f'pair {run + 1}: {cpu[ours.name]:.0f} vs {cpu[base.name]:.0f} ms', file=sys.stderr)
            else:
                cpu = [bench.cpu_per_100mb(ours, big, args.paced) for _ in range(max(runs, 5))]
        finally:
            bench.close()
        if args.baseline:
            a, b = [p[0] for p in pairs], [p[1] for p in pairs]
            ratios = sorted(x / y for x, y in pairs)
            print(f"daemon CPU per 100 MB delivered ({shape}, {big >> 20} MiB, {len(pairs)} pairs): "
                  f"{args.wrapper} median {median(a):.0f} ms ({min(a):.0f}-{max(a):.0f}), "
                  f"{args.baseline} median {median(b):.0f} ms ({min(b):.0f}-{max(b):.0f}); "
                  f"ratio per pair median {median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})")
            return
        print(f"daemon CPU per 100 MB delivered ({shape}): median {median(cpu):.0f} ms of {len(cpu)} runs "
              f"({', '.join(f'{c:.0f}' for c in cpu)}; {big >> 20} MiB each)")
        return
    python = Wrapper('python 0.9.30', [sys.executable, '-m', 'saltpeter.wrapper'],
                     {'PYTHONPATH': os.path.abspath(args.python_wrapper)})
    wrappers = [ours, python]
    bench = Bench(args)
    m = {w.name: {} for w in wrappers}

    def record(w, key, value):
        m[w.name].setdefault(key, []).append(value)

    try:
        for run in range(runs):
            print(f'run {run + 1}/{runs}', file=sys.stderr)
            for w in (wrappers if run % 2 == 0 else wrappers[::-1]):
                latency, hwm, cpu = bench.launch_and_idle(w, idle)
                record(w, 'launch_ms', latency * 1000)
                record(w, 'rss_kib', hwm)
                record(w, 'idle_cpu_ms', cpu)
                elapsed, retcode = bench.kill_to_complete(w)
                record(w, 'kill_ms', elapsed * 1000)
                record(w, 'kill_retcode', retcode)
                record(w, 'deliver4_s', bench.deliver(w, 4 * 1024 * 1024))
                size = big if w is ours else python_sink_size
                record(w, 'sink_mbs', bench.sink_throughput(w, size))
                if w is ours:
                    record(w, 'cpu100_ms', bench.cpu_per_100mb(w, big))
        raw = bench.raw_rate(big)
        baseline_ms = launch_baseline()
    finally:
        bench.close()

    o, p = m[ours.name], m[python.name]
    raw_pipe = raw['through a pipe to cat']
    rows = [
        ('launch latency (ms)', median(o['launch_ms']), median(p['launch_ms']), 'lower', '<= 3 ms', median(o['launch_ms']) <= 3),
        ('daemon peak RSS, VmHWM (MB)', median(o['rss_kib']) / 1024, median(p['rss_kib']) / 1024, 'lower', '<= 4 MB', median(o['rss_kib']) <= 4 * 1024),
        ('daemon CPU per 10 s of idle job (ms)', median(o['idle_cpu_ms']), median(p['idle_cpu_ms']), 'lower', '<= 10 ms', median(o['idle_cpu_ms']) <= 10),
        ('kill frame -> complete recorded (ms)', median(o['kill_ms']), median(p['kill_ms']), 'lower', '<= 30 ms', median(o['kill_ms']) <= 30),
        ('4 MB delivered, launch -> result recorded (s)', median(o['deliver4_s']), median(p['deliver4_s']), 'lower', '<= 0.5 s', median(o['deliver4_s']) <= 0.5),
        (f'throughput to an ACK-everything sink (MB/s; ours {big >> 20} MiB, python {python_sink_size >> 20} MiB)',
         median(o['sink_mbs']), median(p['sink_mbs']), 'higher', '>= 200 MB/s and >= 1/3 of raw',
         median(o['sink_mbs']) >= 200 and median(o['sink_mbs']) >= raw_pipe / 3),
    ]
    print(f'\nsp_wrapper vs the Python wrapper 0.9.30: medians of {runs} run(s) each, alternating, on {os.cpu_count()} cores\n')
    print('| measure | sp_wrapper | python 0.9.30 | ratio | target (ours) | |')
    print('|---|---:|---:|---:|---|---|')
    for name, ours_v, py_v, better, target, ok in rows:
        low, high = (ours_v, py_v) if better == 'lower' else (py_v, ours_v)
        ratio = f'{high / low:.1f}x better' if low > 0 else 'n/a'
        print(f'| {name} | {ours_v:.2f} | {py_v:.2f} | {ratio} | {target} | {"PASS" if ok else "MISS"} |')
    print(f'| launch of /bin/true measured the same way (ms) | {baseline_ms:.2f} | | | included in both launch figures | |')
    for label, rate in raw.items():
        print(f'| raw rate of the same job, no wrapper, {label} (MB/s) | {rate:.0f} | | | ceiling | |')
    print(f'| daemon CPU per 100 MB delivered to the sink (ms) | {median(o["cpu100_ms"]):.0f} | | | no worse than before | |')
    print(f'\nkill retcodes: sp_wrapper {sorted(set(o["kill_retcode"]))}, python {sorted(set(p["kill_retcode"]))}')
    print(f'ours at {median(o["sink_mbs"]) / raw_pipe:.0%} of the raw piped rate')


if __name__ == '__main__':
    main()
