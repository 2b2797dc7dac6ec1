"""What the framework tests share: a gstabd per test class, small PyTorch models, and
processes started together (torchrun's, jax.distributed's). The test files set ARGS through
main().
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import torch  # noqa: E402

import gstab  # noqa: E402
from gstabd import Gstabd  # noqa: E402

ARGS = None  # the command line's --gstabd, --library, --gstabd_library_path
SPIKE_STEP = 30  # spikes are reported after 25 warm-up steps
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 1)).to(dtype)


def regression_batch(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    return x.to(dtype), x.sum(1, keepdim=True).sin().to(dtype)


def torch_norm(tensors):
    return torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in tensors])).item()


class GstabdTest(unittest.TestCase):
    """A gstabd of the class's own, on BACKEND."""
    BACKEND = "cpu"

    @classmethod
    def setUpClass(cls):
        cls.gstabd = Gstabd(ARGS.gstabd, backend=cls.BACKEND,
                            library_path=ARGS.gstabd_library_path)

    @classmethod
    def tearDownClass(cls):
        rc = cls.gstabd.stop()
        assert rc == 0, f"gstabd exited {rc}"

    def attach(self, job, **kwargs):
        client = gstab.Client(self.gstabd.socket)
        client.attach(job, policy=kwargs.pop("policy", "stabilize"), **kwargs)
        self.addCleanup(client.close)
        return client


def example_env() -> dict:
    """The environment for an example process: this one's, with the library under test. A
    process that crashes (SIGSEGV) prints every thread's Python stack (faulthandler) into the
    output the failing test shows: the crash's place, in gstab's library or a framework's."""
    return dict(os.environ, PYTHONFAULTHANDLER="1",
                **({"GSTAB_LIBRARY": ARGS.library} if ARGS.library else {}))


def peer_gstabd() -> Gstabd:
    """A gstabd that takes part in jobs across nodes (its peers over loopback)."""
    return Gstabd(ARGS.gstabd, "--peer_listen=127.0.0.1:0", "--step_timeout_ms=60000",
                  library_path=ARGS.gstabd_library_path)


def peer_gstabds(n: int) -> list:
    """n of peer_gstabd(); those started are stopped again if one fails to start."""
    started = []
    try:
        for _ in range(n):
            started.append(peer_gstabd())
    except BaseException:
        for g in started:
            g.stop()
        raise
    return started


def run_together(test, commands, env) -> str:
    """Runs the commands at once, each in a process group of its own (killed whole at the end:
    torchrun and its ranks), and fails `test` unless each exits 0; their outputs, joined."""
    runs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, start_new_session=True) for c in commands]
    outputs = []
    try:
        for run in runs:
            outputs.append(run.communicate(timeout=180)[0])
    finally:
        for run in runs:
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    output = "\n".join(outputs)
    for run in runs:
        test.assertEqual(run.returncode, 0, output)
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    """Parses the command line into ARGS and runs the calling file's tests."""
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library", help="default: where the package finds it")
    parser.add_argument("--gstabd_library_path", default="",
                        help="LD_LIBRARY_PATH for gstabd only (this process keeps its own)")
    ARGS, rest = parser.parse_known_args()
    gstab.load_library(ARGS.library or None)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)
