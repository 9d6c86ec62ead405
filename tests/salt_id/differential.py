#!/usr/bin/env python3
"""The differential test of the machine id (issue 18): for every case of
corpus.py, the id each given Salt computes (`salt.config.minion_config`, as
salt-minion does at start) and the id the agent computes
(`sp_wrapper --print-machine-id`, no SP_MACHINE_ID) must be equal.

Each case runs in its own mount, UTS and network namespaces (`unshare`, so
root): the case's files are laid over /etc (an overlay: /etc/salt,
/etc/hosts, /etc/hostname, resolv.conf...), the host name is the case's, and
the only network is a loopback with the case's addresses. Salt and the agent
see the same host, which nothing on the real host can disturb. With
`minion_args`, the agent runs under a process whose command line is
`salt-minion <args>` (how a minion started with `-c DIR` is recognised), and
salt-minion's own option parser is given the same arguments.

usage: differential.py --bin DIST/sp_wrapper --salt LABEL=PYTHON[:PYTHONPATH] ...
Exit status 0 only when every case is equal for every Salt; a Salt that
cannot be imported is a failure, not a skip.
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import CASES, DEFAULT_HOST, DEFAULT_HOSTNAME  # noqa: E402

ORACLE = os.path.join(HERE, "salt_minion_id.py")

# Inside the namespaces: lay the case over /etc, name the host, add the
# addresses, then run the command. `$1` is the case's root, `$2` the host
# name, `$3` the addresses (space-separated), the rest the command.
SETUP = r"""
set -e
root=$1 name=$2 addresses=$3
shift 3
mount -t overlay overlay -o "lowerdir=$root/etc:/etc" /etc
# salt-minion's option parser sets up logging and caches: not on the host.
for d in /var/log /var/cache /run; do mount -t tmpfs tmpfs "$d"; done
hostname "$name"
if [ -n "$addresses" ]; then
    ip link set lo up
    for a in $addresses; do ip addr add "$a/32" dev lo; done
fi
exec "$@"
"""

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 120


def write_case(root, case):
    files = dict(DEFAULT_HOST)
    files.update(case["files"])
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def in_namespaces(root, case, command, env):
    args = [
        "unshare", "--mount", "--uts", "--net", "--propagation", "private", "--",
        "sh", "-c", SETUP, "sh", root, case.get("hostname", DEFAULT_HOSTNAME),
        " ".join(case.get("addresses", [])),
    ] + command
    return subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=TIMEOUT)


def oracle_args(case):
    """How Salt is asked: a case about where the config directory comes from
    (salt-minion's command line, its environment) asks salt-minion's own
    option parser, which decides that; the others ask minion_config, as
    salt-call does (a broken include is skipped there; the daemon, with
    ignore_config_errors=False, would not start at all)."""
    env = case.get("env", {})
    if "minion_args" in case or "SALT_CONFIG_DIR" in env or "SALT_MINION_CONFIG" in env:
        return ["--salt-minion"] + case.get("minion_args", [])
    return ["/etc/salt"]


def salt_id(python, pythonpath, root, case):
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    env.update(case.get("env", {}))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = in_namespaces(root, case, [python, ORACLE] + oracle_args(case), env)
    lines = [l for l in done.stdout.decode("utf-8", "replace").splitlines() if l.startswith("ID=")]
    if done.returncode != 0 or not lines:
        return None, done.stderr.decode("utf-8", "replace")[-2000:]
    return lines[-1][3:], ""


def agent_id(binary, root, case, scratch):
    env = {"PATH": PATH, "HOME": "/root"}
    env.update(case.get("env", {}))
    command = [binary, "--print-machine-id"]
    if "minion_args" in case:
        # A process whose command line is `salt-minion <args>` (an
        # interpreter running a script of that name, as Salt's own are),
        # with the agent as its child.
        fake = os.path.join(scratch, "salt-minion")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\n"$SP_DIFF_AGENT" --print-machine-id\nexit $?\n')
        os.chmod(fake, 0o755)
        env["SP_DIFF_AGENT"] = binary
        command = ["/bin/sh", fake] + case["minion_args"]
    done = in_namespaces(root, case, command, env)
    if done.returncode != 0:
        return None, done.stderr.decode("utf-8", "replace")
    return done.stdout.decode("utf-8", "replace").rstrip("\n"), done.stderr.decode("utf-8", "replace")


def run_case(number, case, binary, salts, scratch):
    """One case: the agent's id, then each Salt's. Returns (lines to print,
    equal, different, not compared)."""
    root = os.path.join(scratch, "case%d" % number)
    write_case(root, case)
    got, agent_log = agent_id(binary, root, case, root)
    lines, equal, different, not_compared = [], 0, 0, []
    for label, python, pythonpath in salts:
        if int(label.split(".")[0]) < case.get("since", 0):
            not_compared.append("%s on Salt %s (an option of Salt %d+)" % (
                case["name"], label, case["since"]))
            continue
        expected, why = salt_id(python, pythonpath, root, case)
        if expected is None:
            different += 1
            lines.append("FAIL %-55s Salt %s could not compute the id:\n%s" % (
                case["name"], label, why))
        elif got != expected:
            different += 1
            lines.append("FAIL %-55s Salt %s %r, agent %r (%s)" % (
                case["name"], label, expected, got, agent_log.strip()))
        else:
            equal += 1
    if different == 0:
        lines.append("ok   %-55s %r" % (case["name"], got))
    return lines, equal, different, not_compared


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--salt", action="append", required=True,
                        help="LABEL=PYTHON[:PYTHONPATH]")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2,
                        help="cases run at once (each in namespaces of its own)")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("differential: needs root and unshare (mount, UTS and network namespaces)")
        return 2
    salts = []
    for spec in args.salt:
        label, _, rest = spec.partition("=")
        python, _, pythonpath = rest.partition(":")
        salts.append((label, python, pythonpath))
    binary = os.path.abspath(args.bin)
    cases = [c for c in CASES if not args.only or args.only in c["name"]]
    started = time.time()
    failures = 0
    equal = 0
    not_applicable = []
    with tempfile.TemporaryDirectory(prefix="sp_salt_id_") as scratch:
        # Salt's import is most of each case's time: two at once use both
        # cores of the CI machine; results print in the corpus's order.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = [pool.submit(run_case, number, case, binary, salts, scratch)
                    for number, case in enumerate(cases, 1)]
            for run in runs:
                lines, case_equal, case_different, case_not_compared = run.result()
                for line in lines:
                    print(line)
                equal += case_equal
                failures += case_different
                not_applicable += case_not_compared
    total = len(cases) * len(salts) - len(not_applicable)
    for what in not_applicable:
        print("not compared: %s" % what)
    print("differential: %d cases x %d Salt versions (%s): %d equal, %d different, "
          "%d not compared (option newer than that Salt), in %.0f s" % (
              len(cases), len(salts), ", ".join(s[0] for s in salts), equal, failures,
              len(not_applicable), time.time() - started))
    return 0 if failures == 0 and equal == total else 1


if __name__ == "__main__":
    sys.exit(main())
