"""A real gstabd for the Python tests, in a folder of its own (CPU backend unless told).

GSTAB_TEST_LOG_DIR=DIR keeps each gstabd's log in DIR, past the test (scripts/gpu-check).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


class Gstabd:
    def __init__(self, binary: str, *flags: str, backend: str = "cpu", library_path: str = ""):
        """library_path: LD_LIBRARY_PATH for gstabd alone (the test process keeps its own)."""
        self.dir = tempfile.TemporaryDirectory(prefix="gstab-py-")
        self.socket = os.path.join(self.dir.name, "gstabd.sock")
        self.log = os.path.join(self.dir.name, "gstabd.log")  # a file: a pipe could fill up
        log_dir = os.environ.get("GSTAB_TEST_LOG_DIR")  # keeps the log past the test
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=log_dir, prefix="gstabd-", suffix=".log",
                                             delete=False) as f:
                self.log = f.name
        self.command = [binary, f"--socket={self.socket}", f"--state_dir={self.dir.name}/state",
                        "--metrics_port=-1", f"--backend={backend}", "--lease_ms=2000", *flags]
        self.env = dict(os.environ, **({"LD_LIBRARY_PATH": library_path} if library_path else {}))
        self._start()

    def _start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log,
                                            env=self.env)
        deadline = time.time() + 60
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.time() > deadline:
                self.process.kill()
                self.process.wait()
                with open(self.log, errors="replace") as f:
                    raise RuntimeError("gstabd did not start: " + f.read())
            time.sleep(0.02)

    def tcp_address(self) -> str:
        """HOST:PORT of the TCP port gstabd logged (started with --listen)."""
        deadline = time.time() + 10
        while True:
            with open(self.log, errors="replace") as f:
                m = re.search(r"on TCP (\S+:\d+) \(mutual TLS\)", f.read())
            if m:
                return m.group(1)
            if time.time() > deadline:
                raise RuntimeError("gstabd logged no TCP port")
            time.sleep(0.05)

    def restart(self, down: float = 0, forget: bool = False, kill: bool = False) -> int:
        """Stops gstabd (SIGTERM: it checkpoints its jobs) and starts another on the same socket
        and state folder `down` seconds later, as a DaemonSet replaces its pod; returns the first
        one's exit status. forget: the state folder is emptied in between (no checkpoints).
        kill: SIGKILL rather than SIGTERM (an out-of-memory kill, a crash)."""
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        rc = self.process.wait(20)
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        if forget:
            shutil.rmtree(os.path.join(self.dir.name, "state"), ignore_errors=True)
        time.sleep(down)
        self._start()
        return rc

    def stop(self) -> int:
        """Stops gstabd (SIGTERM) and removes its folder; returns its exit status."""
        self.process.terminate()
        rc = self.process.wait(20)
        self.dir.cleanup()
        return rc


def command_line():
    """A test file's command line, `--gstabd PATH [--library PATH]`, with the library loaded:
    (those arguments, the rest for unittest.main's argv)."""
    import gstab
    parser = argparse.ArgumentParser()
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library", help="default: where the package finds it")
    args, rest = parser.parse_known_args()
    gstab.load_library(args.library)
    return args, [sys.argv[0]] + rest
