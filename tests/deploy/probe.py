"""Shared by the deployment checks: wait for a gstabd process to answer its health probe."""
import subprocess
import time


def wait_until_healthy(daemon, probe, seconds=10.0):
    """True once `probe` (a command, e.g. gstabctl health) exits 0 while `daemon` (a Popen)
    runs; False if the daemon exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and daemon.poll() is None:
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return True
        time.sleep(0.1)
    return False
