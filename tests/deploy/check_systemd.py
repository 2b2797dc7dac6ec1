"""deploy/systemd/gstabd.service: systemd reads it without a complaint, and the real gstabd
started with its command line (its folders moved under a temporary one) serves both sockets,
makes the socket 0660, opens as many files as its mapping cap needs, and stops on the unit's
signal, checkpointing, within the unit's stop timeout."""
import argparse
import os
import re
import resource
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import wait_until_healthy  # noqa: E402

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def read_unit(path):
    """The unit's settings, continuation lines joined: {key: [values]}."""
    settings = {}
    text = open(path).read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def limit_open_files(count):
    """The open-file limit LimitNOFILE= gives, where this process may set it (root)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))
    except (ValueError, OSError):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True)
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--gstabctl", required=True)
    args = parser.parse_args()
    args.gstabd = os.path.abspath(args.gstabd)
    unit = read_unit(args.unit)
    argv = shlex.split(unit["ExecStart"][0])
    check(argv[0] == "/usr/local/bin/gstabd", f"ExecStart runs the installed gstabd ({argv[0]})")

    with tempfile.TemporaryDirectory() as tmp:
        # systemd-analyze reads the unit as systemd would, and checks that ExecStart's binary is
        # there: the built gstabd stands in for the installed one.
        copy = os.path.join(tmp, "gstabd.service")
        with open(copy, "w") as out:
            out.write(open(args.unit).read().replace("/usr/local/bin/gstabd", args.gstabd))
        verify = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True,
                                text=True)
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines()
                      if "gstabd.service" in line]
        check(verify.returncode == 0 and not complaints,
              f"systemd-analyze verify: rc {verify.returncode} {complaints}")

        # The unit's folders, made as systemd makes them, under tmp.
        moved = {"/run/gstab-probe": f"{tmp}/run/gstab-probe", "/run/gstab": f"{tmp}/run/gstab",
                 "/var/lib/gstab": f"{tmp}/lib/gstab"}
        for folder in moved.values():
            os.makedirs(folder)
        command = [args.gstabd]
        for arg in argv[1:]:
            arg = re.sub("|".join(map(re.escape, moved)), lambda m: moved[m.group(0)], arg)
            command.append("--metrics_port=0" if arg.startswith("--metrics_port=") else arg)
        socket = f"{tmp}/run/gstab/gstabd.sock"
        probe_socket = f"{tmp}/run/gstab-probe/gstabd.sock"
        check(f"--socket={socket}" in command and f"--health_socket={probe_socket}" in command,
              "the unit names a socket and a health socket in its RuntimeDirectory folders")
        check(f"--state_dir={tmp}/lib/gstab" in command,
              "the unit's --state_dir is its StateDirectory")
        nofile = int(unit["LimitNOFILE"][0])
        help_text = subprocess.run([args.gstabd, "--help"], capture_output=True, text=True).stdout
        cap = int(re.search(r"--max_mappings\n.*?\(default: (\d+)\)", help_text, re.S).group(1))
        check(nofile >= cap + 1024, f"LimitNOFILE {nofile} covers --max_mappings {cap} and more")

        log = open(os.path.join(tmp, "gstabd.log"), "w+")
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: limit_open_files(nofile))
        try:
            healthy = wait_until_healthy(
                daemon, [args.gstabctl, f"--socket={probe_socket}", "health"], seconds=20)
            check(healthy, "gstabd started with the unit's command line answers on its health "
                           "socket")
            if healthy:
                mode = stat.S_IMODE(os.stat(socket).st_mode)
                check(mode == 0o660, f"the socket is 0660 ({oct(mode)})")
                status = subprocess.run([args.gstabctl, f"--socket={socket}", "status"],
                                        capture_output=True, text=True)
                check(status.returncode == 0, f"gstabctl status on the socket: {status.stderr}")
                if resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= nofile:
                    limits = open(f"/proc/{daemon.pid}/limits").read()
                    check(re.search(rf"Max open files\s+{nofile}\s", limits) is not None,
                          "gstabd keeps the unit's open-file limit")
                else:
                    print(f"skip the open-file limit: this machine's hard limit is below {nofile}")
            refused = subprocess.run(command + ["--no_such_flag"], capture_output=True)
            check(str(refused.returncode) in unit["RestartPreventExitStatus"][0].split(),
                  f"a refused command line's exit ({refused.returncode}) is not restarted")
            stop_signal = getattr(signal, unit["KillSignal"][0])
            timeout = float(unit["TimeoutStopSec"][0])
            started = time.monotonic()
            daemon.send_signal(stop_signal)
            code = daemon.wait(timeout=timeout)
            check(code == 0, f"{unit['KillSignal'][0]} stops gstabd with exit 0 ({code}) in "
                             f"{time.monotonic() - started:.1f} s of the unit's {timeout:.0f}")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            log.seek(0)
            output = log.read()
        if failures:
            print(output)
    print("systemd unit check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
