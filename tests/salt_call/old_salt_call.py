#!/usr/bin/env python3
"""The Salt that old hosts run, launching the agent (issue 18, item 5).

For each given Salt (2019.2.8 on Python 2.7, 3006 on Python 3.10; the e2e
suite covers 3008.5): `salt-call --local cmd.run_all <dist/sp_wrapper>
"env={...}"`, the arguments Saltpeter 0.9.32 passes (its `env=` is `str()`
of the dict it builds, which Salt parses as YAML; the cron's `cwd` and
`user` travel inside it as SP_CWD and SP_USER), with the agent reporting to
the real machines endpoint (tests/harness/endpoint.py, saltpeter 0.9.32).

Asserted: Salt's cmd.run_all returns 0 with the agent's two lines; it comes
back within 2 s of what the same salt-call takes for `true` (so the agent's
launch costs Salt less than 2 s: no pipe held open, no wait); the endpoint
records the run under the minion id -- which the agent takes from the `-c`
of the salt-call above it, nothing setting SP_MACHINE_ID -- with the exact
output, retcode 0, start and end times.

usage: old_salt_call.py --bin dist/sp_wrapper --endpoint-python .venv/bin/python
                        --salt LABEL=PYTHON[:PYTHONPATH] ...   (root: SP_USER)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CALL_BACK_WITHIN = 2.0


class Endpoint(object):
    """tests/harness/endpoint.py: the real endpoint, driven over stdin/stdout."""

    def __init__(self, python, log):
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "tests/harness/endpoint.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        ready = json.loads(self.proc.stdout.readline())
        self.port = ready["port"]

    def request(self, **req):
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait()


def saltpeter_env_arg(port, name, instance, command, logdir, cwd, user, timeout, env):
    """`'env=' + str(wrapper_env)` exactly as saltpeter 0.9.32's main.py
    builds it (the same keys, in the same order)."""
    wrapper_env = {
        "SP_WEBSOCKET_URL": "ws://127.0.0.1:%d" % port,
        "SP_JOB_NAME": name,
        "SP_JOB_INSTANCE_NAME": instance,
        "SP_JOB_INSTANCE": instance,
        "SP_COMMAND": command,
        "SP_WRAPPER_LOGLEVEL": "normal",
        "SP_WRAPPER_LOGDIR": logdir,
        "SP_ALLOW_OVERLAP": "false",
        "PYTHONUNBUFFERED": "1",
    }
    wrapper_env["SP_CWD"] = cwd
    wrapper_env["SP_USER"] = user
    wrapper_env["SP_TIMEOUT"] = str(timeout)
    for key, value in env.items():
        wrapper_env[key] = str(value)
    return "env=" + str(wrapper_env)


def salt_call(script, pythonpath, conf, args):
    """Run salt-call; (seconds until it exited and its pipes closed, result)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    started = time.time()
    done = subprocess.run([script, "-c", conf, "--local", "--out", "json", "-l", "quiet"] + args,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    took = time.time() - started
    try:
        result = json.loads(done.stdout.decode())["local"]
    except (ValueError, KeyError):
        raise SystemExit("salt-call failed (exit %d): %s %s" % (
            done.returncode, done.stdout.decode()[-2000:], done.stderr.decode()[-2000:]))
    return took, result


def check(label, python, pythonpath, binary, endpoint, scratch):
    failures = []
    minion_id = "old-salt-%s" % label
    work = os.path.join(scratch, label)
    conf = os.path.join(work, "conf")
    os.makedirs(conf)
    os.makedirs(os.path.join(work, "bin"))
    with open(os.path.join(conf, "minion"), "w") as f:
        f.write("id: %s\nfile_client: local\nroot_dir: %s\n" % (minion_id, os.path.join(work, "root")))
    # An entry point named salt-call, as pip and the packages install it:
    # the agent finds the minion's config directory from its `-c`.
    script = os.path.join(work, "bin", "salt-call")
    with open(script, "w") as f:
        f.write("#!%s\nimport salt.scripts\nsalt.scripts.salt_call()\n" % python)
    os.chmod(script, 0o755)
    logdir = os.path.join(work, "log")
    jobdir = os.path.join(work, "cwd")
    os.makedirs(jobdir)
    os.chmod(work, 0o755)
    os.chmod(jobdir, 0o777)

    baseline, result = salt_call(script, pythonpath, conf, ["cmd.run_all", "/bin/true"])
    if result.get("retcode") != 0:
        failures.append("cmd.run_all /bin/true: %r" % result)

    name = "oldsalt_%s" % label.replace(".", "_")
    instance = "%s_%d" % (name, int(time.time()))
    reply = endpoint.request(cmd="add_job", name=name, instance=instance, machines=[minion_id])
    assert reply.get("ok"), reply
    command = 'printf "%s\\n" one "two words"; id -un; pwd; echo "$OLD_SALT_VAR"'
    env_arg = saltpeter_env_arg(endpoint.port, name, instance, command, logdir, jobdir,
                                "nobody", 60, {"OLD_SALT_VAR": "from the cron's env"})
    took, result = salt_call(script, pythonpath, conf, ["cmd.run_all", binary, env_arg])
    stdout = result.get("stdout", "")
    if result.get("retcode") != 0 or "Wrapper started successfully" not in stdout:
        failures.append("cmd.run_all of the agent: %r" % result)
    extra = took - baseline
    print("Salt %s: salt-call cmd.run_all /bin/true %.2f s, the agent %.2f s (+%.2f s)" % (
        label, baseline, took, extra))
    if extra >= CALL_BACK_WITHIN:
        failures.append("Salt's call came back %.2f s later than for /bin/true (bound %.1f s)" % (
            extra, CALL_BACK_WITHIN))

    record = endpoint.request(cmd="wait_result", name=name, machine=minion_id, timeout=30)
    expected = "one\ntwo words\nnobody\n%s\nfrom the cron's env\n" % jobdir
    if not record.get("ok"):
        failures.append("no record under %r within 30 s: %r" % (minion_id, record))
    else:
        if record.get("ret") != expected:
            failures.append("recorded output %r, expected %r" % (record.get("ret"), expected))
        if record.get("retcode") != 0:
            failures.append("recorded retcode %r" % record.get("retcode"))
        if not record.get("starttime") or not record.get("endtime"):
            failures.append("no start/end time: %r" % record)
    for failure in failures:
        print("FAIL Salt %s: %s" % (label, failure))
    if not failures:
        print("ok   Salt %s: recorded under %s, output exact, retcode 0" % (label, minion_id))
    return not failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--endpoint-python", required=True)
    parser.add_argument("--salt", action="append", required=True, help="LABEL=PYTHON[:PYTHONPATH]")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("old_salt_call: needs root (the job runs as nobody, SP_USER)")
        return 2
    binary = os.path.abspath(args.bin)
    ok = True
    with tempfile.TemporaryDirectory(prefix="sp_old_salt_") as scratch:
        os.chmod(scratch, 0o755)
        with open(os.path.join(scratch, "endpoint.log"), "w") as log:
            endpoint = Endpoint(args.endpoint_python, log)
            try:
                for spec in args.salt:
                    label, _, rest = spec.partition("=")
                    python, _, pythonpath = rest.partition(":")
                    ok = check(label, python, pythonpath, binary, endpoint, scratch) and ok
            finally:
                endpoint.close()
        if not ok:
            with open(os.path.join(scratch, "endpoint.log")) as f:
                print(f.read()[-3000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
