#!/usr/bin/env python3
"""tests/e2e/bench_run_all.py: Salt's own cmd.run_all time for the wrapper
Saltpeter launches, sp_wrapper against the Python reference wrapper 0.9.30, on
the real stack (stack.py). Both run the same trivial cron, alternating; the
time is read from the minion's log, where cmdmod logs "Executing command
'<wrapper>'" just before it starts the process and the job process logs
"Job <jid> execution finished" once the process has exited and its stdout and
stderr have closed: that is how long Salt (and Saltpeter's 30 s Salt timeout)
waits for the wrapper.

usage: bench_run_all.py --wrapper dist/sp_wrapper --python-wrapper .venv/ref0930/saltpeter/wrapper.py [--runs N]
(run with the e2e venv's python: ./build.sh e2e-bench)
"""

import argparse
import os
import re
import statistics
import sys
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import Stack  # noqa: E402

LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \[([^\]]+)\]\[(\w+)\]\[(\d+)\] (.*)$')


def run_all_times(minion_log, wrappers):
    """{wrapper path: [ms, ...]} from the minion log."""
    started = {}  # pid -> (wrapper, time)
    times = {w: [] for w in wrappers}
    with open(minion_log, errors='replace') as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            when = datetime.strptime(m.group(1), '%Y-%m-%d %H:%M:%S.%f')
            pid, message = m.group(4), m.group(5)
            if message.startswith('Executing command '):
                for w in wrappers:
                    if message.startswith("Executing command '%s'" % w):
                        started[pid] = (w, when)
            elif ' execution finished' in message and pid in started:
                w, t0 = started.pop(pid)
                times[w].append((when - t0).total_seconds() * 1000)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--wrapper', required=True)
    parser.add_argument('--python-wrapper', required=True)
    parser.add_argument('--runs', type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('bench_run_all.py: runs salt-master and salt-minion as root; run it as root')
    stack = Stack(args.wrapper, os.path.dirname(sys.executable), args.python_wrapper)
    ok = False
    try:
        stack.start({
            'bench_agent': stack.cron('true'),
            # The Python wrapper names the machine after the host: tell it.
            'bench_python': stack.cron('true', wrapper_path=stack.python_wrapper,
                                       env={'SP_MACHINE_ID': stack.minion_id}),
        })
        print('stack up; %d runs each, alternating' % args.runs, flush=True)
        for i in range(args.runs):
            for cron in ('bench_agent', 'bench_python'):
                data = stack.wait_finished(cron, stack.run(cron), 90)
                result = data['results'][stack.minion_id]
                if result.get('retcode') != 0:
                    sys.exit('bench_run_all.py: %s run %d stored retcode %r: %s' % (
                        cron, i, result.get('retcode'), result.get('ret', '')[:300]))
        times = run_all_times(os.path.join(stack.root, 'log', 'minion.log'),
                              [stack.wrapper, stack.python_wrapper])
        agent, python = times[stack.wrapper], times[stack.python_wrapper]
        if len(agent) != args.runs or len(python) != args.runs:
            sys.exit('bench_run_all.py: found %d and %d timings in the minion log, expected %d each'
                     % (len(agent), len(python), args.runs))
        print("\nSalt's cmd.run_all time for the wrapper (minion log, ms; %d runs each):" % args.runs)
        print('  %-28s %8s %8s %8s' % ('', 'median', 'min', 'max'))
        for name, values in (('sp_wrapper', agent), ('Python wrapper 0.9.30', python)):
            print('  %-28s %8.1f %8.1f %8.1f' % (name, statistics.median(values), min(values), max(values)))
        print('  ratio (Python / sp_wrapper, medians): %.1fx' % (statistics.median(python) / statistics.median(agent)))
        print('  (%d CPUs, load average %.2f over the last minute: both share the same machine state)'
              % (os.cpu_count(), os.getloadavg()[0]))
        ok = True
    finally:
        stack.stop()
        if ok:
            stack.remove()
        else:
            print('bench_run_all.py: logs kept in %s' % stack.root, file=sys.stderr)


if __name__ == '__main__':
    main()
