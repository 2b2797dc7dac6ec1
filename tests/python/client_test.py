"""The Python package (python/gstab, ctypes over libgstab.so) against a real gstabd.

    client_test.py --gstabd PATH --library PATH
    client_test.py --gstabd PATH --bundle DIR    # scripts/client-bundle's DIR, as a training
                                                 # image uses it: package and libraries from DIR

A job's configuration, checkpoints and jobs across nodes: job_control_test.py.
"""
import argparse
import ctypes
import math
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import package_path  # first: the folder gstab comes from
_BUNDLE = package_path.first_on_sys_path()
import gstab  # noqa: E402
from gstabd import Gstabd  # noqa: E402

ARGS = None


def bf16_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def float_to_bf16(x: float) -> int:  # exact for the values used here (8 significant bits)
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def register_one_tensor(client):
    """An arena of one 16-element tensor, registered: to hold the client's place in a job."""
    arena = gstab.Arena()
    arena.add_tensor("w", 16)
    arena.allocate()
    client.register_arena(arena)
    return arena


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gstabd = Gstabd(ARGS.gstabd)
        cls.dir, cls.socket = cls.gstabd.dir, cls.gstabd.socket

    @classmethod
    def tearDownClass(cls):
        rc = cls.gstabd.stop()
        assert rc == 0, f"gstabd exited {rc}"

    def test_version(self):
        self.assertEqual(gstab.load_library().gstab_version().decode(), "0.2.0")
        self.assertEqual(gstab.__version__, "0.2.0")
        # GSTAB_LIBRARY, when set, is the only library tried: one that is not there is said so.
        env = dict(os.environ, GSTAB_LIBRARY="/nonexistent/libgstab.so",
                   PYTHONPATH=os.path.dirname(os.path.dirname(gstab.__file__)),
                   LD_LIBRARY_PATH=os.path.dirname(gstab.load_library()._name))
        run = subprocess.run([sys.executable, "-c", "import gstab; gstab.load_library()"],
                             env=env, timeout=60, capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("GSTAB_LIBRARY names /nonexistent/libgstab.so, which does not exist",
                      run.stderr)
        # One that is there but does not load is said so, with the loader's reason.
        with tempfile.NamedTemporaryFile(suffix=".so") as broken:
            broken.write(b"not a library")
            broken.flush()
            env["GSTAB_LIBRARY"] = broken.name
            run = subprocess.run([sys.executable, "-c", "import gstab; gstab.load_library()"],
                                 env=env, timeout=60, capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(f"{broken.name} was found but cannot be loaded: ", run.stderr)
        self.assertNotIn("not found", run.stderr)

    def test_the_socket_comes_from_gstab_socket_when_not_given(self):
        before = os.environ.get("GSTAB_SOCKET")
        os.environ["GSTAB_SOCKET"] = self.socket
        try:
            gstab.Client().attach("py-env-socket")
            elsewhere = os.path.join(os.path.dirname(self.socket), "elsewhere.sock")
            os.environ["GSTAB_SOCKET"] = elsewhere
            with self.assertRaises(gstab.Error) as e:
                gstab.Client()
            self.assertIn("elsewhere.sock", e.exception.message)
        finally:
            if before is None:
                os.environ.pop("GSTAB_SOCKET")
            else:
                os.environ["GSTAB_SOCKET"] = before

    def test_steps_stabilize_arena_gradients_in_place(self):
        client = gstab.Client(self.socket)
        client.attach("py-job", policy="stabilize")
        arena = gstab.Arena()
        w = arena.add_tensor("w", 1000, "float32", "g")
        b = arena.add_tensor("b", 300, "bfloat16", "g")
        arena.allocate()
        wv, bv = arena.view(w), arena.view(b)
        client.register_arena(arena)
        for step in range(1, 31):  # spikes are reported after 25 warm-up steps
            factor = 1e4 if step == 30 else 1.0
            ws = [factor * math.sin(0.01 * i * step) for i in range(1000)]
            for i, x in enumerate(ws):
                wv[i] = x
            ws = [wv[i] for i in range(1000)]  # as float32
            bs = [float_to_bf16(factor * (0.25 + (i % 7) / 8)) for i in range(300)]
            for i, x in enumerate(bs):
                bv[i] = x
            norm = math.sqrt(sum(x * x for x in ws) + sum(bf16_to_float(x) ** 2 for x in bs))
            r = client.step(step)
            self.assertEqual(r.result_step, step)
            self.assertFalse(r.skip)
            self.assertEqual([g.group for g in r.groups], ["g"])
            g = r.groups[0]
            self.assertAlmostEqual(g.norm / norm, 1.0, delta=1e-6)
            self.assertAlmostEqual(g.stabilized_norm, g.norm * g.scale, delta=1e-9 * g.norm)
            for i in (0, 1, 500, 999):
                self.assertAlmostEqual(wv[i], ws[i] * g.scale, delta=1e-6 * abs(ws[i]) + 1e-30)
            # One group: the step's results are the group's.
            self.assertEqual(r.spikes, int(g.spike))
            self.assertAlmostEqual(r.norm, g.norm, delta=1e-12 * g.norm)
            self.assertAlmostEqual(r.stabilized_norm, g.stabilized_norm, delta=1e-9 * g.norm)
            self.assertFalse(r.diverging or g.diverging)
            self.assertEqual((r.statistics_rolled_back, r.not_applied), (0, ""))
            if step < 30:
                self.assertFalse(g.spike, f"step {step}")
                self.assertLess(g.z, 6.0, f"step {step}")
        self.assertTrue(g.spike, "the 1e4x step is a spike")
        self.assertEqual(r.spikes, 1)
        self.assertGreater(g.z, 6.0, "past the z threshold")
        self.assertLess(g.scale, 1e-2, "the spike's magnitude is replaced")
        client.detach()

    def test_the_readmes_first_job_runs_as_written(self):
        # README.md's "Your own job in a minute", its Python as printed there, on this gstabd.
        readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
        with open(readme) as f:
            script = re.search(r"python3 - <<'PY'\n(.*?)\nPY\n", f.read(), re.S).group(1)
        self.assertIn('"/tmp/gstab/gstabd.sock"', script)
        script = script.replace('"/tmp/gstab/gstabd.sock"', repr(self.socket))
        env = dict(os.environ, GSTAB_LIBRARY=gstab.load_library()._name,
                   PYTHONPATH=os.path.dirname(os.path.dirname(gstab.__file__)))
        run = subprocess.run([sys.executable, "-c", script], env=env, timeout=120,
                             capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        spikes = re.findall(r"^step (\d+): norm (\S+) -> (\S+)$", run.stdout, re.M)
        self.assertEqual([s[0] for s in spikes], ["60"], run.stdout)
        self.assertLess(float(spikes[0][2]) * 100, float(spikes[0][1]))
        # Run again, it is refused at step 1 as the README says, with the way on.
        run = subprocess.run([sys.executable, "-c", script], env=env, timeout=120,
                             capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("not after its last step, 100", run.stderr)
        self.assertIn("forget", run.stderr)

    def test_non_finite_step_is_skipped(self):
        client = gstab.Client(self.socket)
        client.attach("py-nan")
        arena = gstab.Arena()
        w = arena.add_tensor("w", 64, "float32")
        arena.allocate()
        wv = arena.view(w)
        client.register_arena(arena)
        for i in range(64):
            wv[i] = 1.0
        wv[7] = float("nan")
        r = client.step(1)
        self.assertTrue(r.skip)
        self.assertTrue(r.groups[0].skipped)
        self.assertEqual(wv[0], 0.0)  # zeroed (the default), so a step taken anyway is harmless
        last = client.stats()["groups"][0]["last_norm"]  # "NaN" in the JSON
        self.assertIsInstance(last, float)
        self.assertTrue(math.isnan(last))
        self.assertFalse(r.diverging)
        # Three non-finite steps in a row: the job is diverging.
        for step in (2, 3):
            wv[7] = float("nan")
            r = client.step(step)
        self.assertTrue(r.skip)
        self.assertTrue(r.diverging)
        self.assertTrue(r.groups[0].diverging)
        self.assertEqual(r.spikes, 0)
        # A failed step leaves no group results of the one before it (the C ABI's
        # gstab_step_group), which a binding would take for its own.
        with self.assertRaises(gstab.Error):
            client.step(3)  # not after the last step
        from gstab._native import CGroupResult
        with client._in_call() as h:
            self.assertEqual(client._lib.gstab_step_group(h, 0, ctypes.byref(CGroupResult())),
                             gstab.StatusCode.INVALID_ARGUMENT)
        # So too a CUDA step refused for its arguments (or in a build without CUDA).
        wv[7] = 1.0
        client.step(4)
        with client._in_call() as h:
            self.assertNotEqual(client._lib.gstab_cuda_step(h, None, 5, None, None, None), 0)
            self.assertEqual(client._lib.gstab_step_group(h, 0, ctypes.byref(CGroupResult())),
                             gstab.StatusCode.INVALID_ARGUMENT)

    def test_bad_input_raises_errors_that_say_what_was_wrong(self):
        client = gstab.Client(self.socket)
        with self.assertRaises(gstab.Error) as e:
            client.attach("py-bad", policy="clipp")
        self.assertEqual(e.exception.code, 3)
        self.assertIn("unknown policy 'clipp'", e.exception.message)
        with self.assertRaises(gstab.Error) as e:  # only None reads $GSTAB_RENDEZVOUS
            client.attach("py-bad-nodes", world_size=2, node_count=2, rendezvous=b"")
        self.assertEqual(e.exception.code, 3)
        self.assertIn("rendezvous_size is 0", e.exception.message)
        client.attach("py-bad")
        with self.assertRaises(gstab.Error) as e:
            client.step(1)  # nothing registered
        self.assertIn("register", e.exception.message.lower())
        with self.assertRaises(ValueError):
            gstab.Arena().add_tensor("x", 4, "int8")
        with self.assertRaises(gstab.Error) as e:
            arena = gstab.Arena()
            arena.add_tensor("x", 4)
            arena.view(0)  # before allocate()
        self.assertIn("allocate", e.exception.message)
        # A registration gstabd refused leaves none: the earlier arena is not stepped either.
        kept = register_one_tensor(client)
        client.step(1)
        bad = gstab.Arena()
        bad.add_tensor("w", 16, replicated=True)  # group 'w' is sharded in the job
        bad.allocate()
        with self.assertRaises(gstab.Error) as e:
            client.register_arena(bad)
        self.assertIn("marks it replicated", e.exception.message)
        kept.buffer(0)[:] = struct.pack("<16f", *[100.0] * 16)
        with self.assertRaises(gstab.Error) as e:
            client.step(2)
        self.assertEqual(e.exception.code, gstab.StatusCode.FAILED_PRECONDITION)
        self.assertIn("the last registration through this client failed", e.exception.message)
        self.assertEqual(struct.unpack("<16f", kept.buffer(0)), (100.0,) * 16)
        client.register_arena(kept)
        client.step(2)
        # So too one the library refused before gstabd saw it (gstabd still holds the earlier).
        with self.assertRaises(gstab.Error) as e:
            client.register_arena(gstab.Arena())
        self.assertIn("the arena has no memory yet", e.exception.message)
        with self.assertRaises(gstab.Error) as e:
            client.step(3)
        self.assertIn("the arena has no memory yet", e.exception.message)
        client.register_arena(kept)
        client.step(3)
        # And a CUDA registration refused for its arguments (or by a build without CUDA).
        with client._in_call() as h:
            self.assertIn(client._lib.gstab_register_cuda(h, None), (3, 12))
        with self.assertRaises(gstab.Error) as e:
            client.step(4)
        self.assertEqual(e.exception.code, gstab.StatusCode.FAILED_PRECONDITION)
        client.register_arena(kept)
        client.step(4)
        client.close()

    def test_numbers_and_text_the_c_abi_cannot_carry_are_refused_and_the_job_goes_on(self):
        for bad in (None, -1, "5", True):  # not found out only when gstabd restarts
            with self.assertRaisesRegex(ValueError, "reattach_timeout: seconds"):
                gstab.Client(self.socket, reattach_timeout=bad)
        # A device named as text is refused by gstab, before any CUDA call (ctypes' own
        # "wrong type" named nothing).
        with self.assertRaisesRegex(TypeError, "device must be an int, not str"):
            gstab.CudaGradients("cuda:0")
        client = gstab.Client(self.socket)
        # ctypes would wrap these (-1 becoming 2^32-1), or cut the name at the NUL.
        for bad in (dict(rank=-1), dict(world_size=2 ** 32 + 1), dict(node_count=-1)):
            with self.assertRaises(ValueError, msg=str(bad)):
                client.attach("py-wrap", **bad)
        with self.assertRaises(ValueError):
            client.attach("py\0wrap")
        # A setting that would read as two, or as none, in the settings text.
        for bad in ({"policy": "clip monitor"}, {"clip.max_norm=3 policy": "monitor"},
                    {"clip.max_norm": ""}, {"clip.max_norm": "0.5,policy=clip"}):
            with self.assertRaises(ValueError, msg=str(bad)) as e:
                client.attach("py-wrap", config=bad)
            self.assertIn("single words", str(e.exception))
        client.attach("py-wrap")
        arena = gstab.Arena()
        with self.assertRaises(ValueError):
            arena.add_tensor("a\0b", 4)
        # Names gstabd would refuse at registration are refused here, before any memory.
        arena.add_tensor("w", 4)
        for name, group, says in (("", "", "must be 1 to 256"), ("x" * 257, "", "must be 1"),
                                  ("w", "", "in the arena already"),
                                  ("v", "a group", "group 'a group' must be empty")):
            with self.assertRaises(gstab.Error, msg=name[:10]) as e:
                arena.add_tensor(name, 4, group=group)
            self.assertEqual(e.exception.code, 3)
            self.assertIn(says, e.exception.message)
        arena.allocate()
        client.register_arena(arena)
        for step in (-1, 2 ** 64 + 5):
            with self.assertRaises(ValueError, msg=str(step)):
                client.step(step)
        with self.assertRaises(TypeError):
            client.register_arena(None)
        with self.assertRaises(gstab.Error) as e:
            client.step(2 ** 62)  # gstabd's own limit: no later step would be left
        self.assertEqual(e.exception.code, 3)
        self.assertIn("not below 2^62", e.exception.message)
        client.step(1)
        self.assertEqual(client.stats()["last_step"], 1)
        client.close()
        # Bytes that are not UTF-8, through the C ABI: the field is named, where gRPC alone
        # answers INTERNAL with no message.
        lib, h = gstab.load_library(), ctypes.c_void_p()
        self.assertEqual(lib.gstab_connect(self.socket.encode(), ctypes.byref(h)), 0)
        self.assertEqual(lib.gstab_attach(h, b"py-\xff", 0, 1, 0, 1, None), 3)
        self.assertIn("AttachRequest.job is not UTF-8 text", lib.gstab_last_error().decode())
        lib.gstab_client_destroy(h)

    def test_an_arena_is_laid_out_once_and_has_memory_once_allocated(self):
        arena = gstab.Arena()
        arena.add_tensor("w", 16)
        with self.assertRaises(gstab.Error) as e:  # a wrong count, refused before any memory
            arena.add_tensor("huge", 1 << 61)
        self.assertEqual(e.exception.code, 3)
        self.assertIn("tensor 'huge'", e.exception.message)
        with self.assertRaises(gstab.Error) as e:
            arena.add_tensor("empty", 0)
        self.assertIn("tensor 'empty' has no elements", e.exception.message)
        with self.assertRaises(ValueError):  # beyond the C ABI's uint64_t
            arena.add_tensor("wraps", 2 ** 64 + 16)
        arena.add_tensor("v", 1 << 40)  # 4 TiB: more than /dev/shm has
        with self.assertRaises(gstab.Error) as e:
            arena.allocate()
        self.assertEqual(e.exception.code, 8)
        self.assertIn("/dev/shm", e.exception.message)
        for index in (0, 1):  # no memory, after a failed allocate() too
            with self.assertRaises(gstab.Error):
                arena.buffer(index)
        arena = gstab.Arena()
        arena.add_tensor("w", 16)
        arena.allocate()
        with self.assertRaises(gstab.Error) as e:
            unallocated = gstab.Arena()
            unallocated.add_tensor("w", 16)
            gstab.Client(self.socket).register_arena(unallocated)
        self.assertEqual(e.exception.code, 9)
        self.assertIn("gstab_arena_allocate", e.exception.message)
        with self.assertRaises(gstab.Error) as e:
            arena.add_tensor("late", 16)  # it would alias tensor 0
        self.assertEqual(e.exception.code, 9)
        self.assertIn("before allocating", e.exception.message)
        self.assertEqual(len(arena.view(0)), 16)

    def test_an_arena_larger_than_dev_shm_is_refused_when_allocated(self):
        # In a mount namespace of its own with a 4 MiB /dev/shm (root only): a 16 MiB arena is
        # refused at allocate() with a message naming /dev/shm, not a bus error at the first write.
        script = ("import gstab\na = gstab.Arena()\na.add_tensor('w', 4 << 20)\n"
                  "try:\n    a.allocate()\n    memoryview(a.view(0))[-1] = 1.0\n"
                  "    print('ALLOCATED')\n"
                  "except gstab.Error as e:\n    print('REFUSED', e.code, e.message)\n")
        env = dict(os.environ, GSTAB_LIBRARY=gstab.load_library()._name,
                   PYTHONPATH=os.path.dirname(os.path.dirname(gstab.__file__)))
        # Then a /dev/shm out of inodes (tmpfs' nr_inodes): no room either, RESOURCE_EXHAUSTED
        # as gstab.h says, where it was INTERNAL.
        for options, says in (("size=4m", "/dev/shm"),
                              ("size=64m,nr_inodes=1", "No space left on device")):
            run = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f'mount -t tmpfs -o {options} tmpfs /dev/shm && exec "$0" -c "$1"',
                 sys.executable, script], capture_output=True, text=True, env=env, timeout=60)
            if run.returncode != 0 and "REFUSED" not in run.stdout:
                if "ALLOCATED" not in run.stdout and ("unshare" in run.stderr or
                                                      "mount" in run.stderr):
                    self.skipTest(f"no mount namespace here: {run.stderr.strip()}")
            self.assertIn("REFUSED 8", run.stdout, run.stdout + run.stderr)
            self.assertIn(says, run.stdout)

    def test_a_group_is_either_replicated_or_sharded(self):
        client = gstab.Client(self.socket)
        client.attach("py-replicated")
        arena = gstab.Arena()
        arena.add_tensor("a", 8, "float32", "g", replicated=True)
        arena.add_tensor("b", 8, "float32", "g")
        arena.allocate()
        with self.assertRaises(gstab.Error) as e:
            client.register_arena(arena)
        self.assertEqual(e.exception.code, 3)
        self.assertIn("replicated", e.exception.message)
        self.assertIn("sharded", e.exception.message)

    def test_a_closed_client_has_detached_and_says_it_is_closed(self):
        with gstab.Client(self.socket) as client:
            client.attach("py-closed", local_rank=0, local_world_size=2)
            one_tensor = register_one_tensor(client)
            self.assertEqual(client.stats()["attached_workers"], 1)
        with self.assertRaises(gstab.Error) as e:
            client.step(2)
        self.assertIn("closed", e.exception.message)
        # Its local rank was let go of at once, not a lease later: the job's other worker finds
        # itself alone.
        with gstab.Client(self.socket) as again:
            again.attach("py-closed", local_rank=1, local_world_size=2)
            self.assertEqual(again.stats()["attached_workers"], 1)
        with self.assertRaises(gstab.Error) as e:
            gstab.Client(self.socket).step(1)
        self.assertIn("not attached", e.exception.message)

    def test_attaching_to_another_job_ends_the_earlier_session(self):
        with gstab.Client(self.socket) as client:
            client.attach("py-left", local_rank=0, local_world_size=2)
            arena = register_one_tensor(client)
            client.attach("py-joined")
            # The job left finds its other worker alone, not a lease later.
            with gstab.Client(self.socket) as other:
                other.attach("py-left", local_rank=1, local_world_size=2)
                self.assertEqual(other.stats()["attached_workers"], 1)
                self.assertEqual(other.stats()["registered_bytes"], 0)
            self.assertEqual(client.stats()["job"], "py-joined")

    def test_a_local_world_size_of_0_counts_as_1(self):
        # As the C ABI takes it: the layouts gstab.torch builds from it would have no worker.
        with gstab.Client(self.socket) as client:
            client.attach("py-lws0", world_size=0, local_world_size=0)
            self.assertEqual((client.local_world_size, client.node_count), (1, 1))
            self.assertEqual(client.stats()["local_world_size"], 1)

    def test_absent_daemon_is_unavailable(self):
        with self.assertRaises(gstab.Error) as e:
            gstab.Client(os.path.join(self.dir.name, "nobody.sock")).attach("py-absent")
        self.assertEqual(e.exception.code, 14)

    def test_a_uid_at_its_connection_cap_is_told_so(self):
        capped = Gstabd(ARGS.gstabd, "--max_connections_per_uid=2")
        held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for s in held:
                s.connect(capped.socket)
            with self.assertRaises(gstab.Error) as e:
                gstab.Client(capped.socket).attach("py-capped")
            self.assertEqual(e.exception.code, 8, e.exception.message)  # RESOURCE_EXHAUSTED
            self.assertIn("refused this process's connection: uid %d already holds 2 connections"
                          % os.getuid(), e.exception.message)
            for s in held:
                s.close()
            for _ in range(50):  # until gstabd has seen them closed
                try:
                    with gstab.Client(capped.socket) as client:
                        client.attach("py-capped")
                        break
                except gstab.Error:
                    time.sleep(0.1)
            else:
                self.fail("the uid's connections were closed, and it is still refused")
        finally:
            for s in held:
                s.close()
            capped.stop()

    def test_cuda_gradients_fail_cleanly_without_a_gpu(self):
        if os.path.exists("/dev/nvidia0"):
            self.skipTest("this machine has a GPU")
        with self.assertRaises(gstab.Error) as e:
            gstab.CudaGradients(0)
        if e.exception.code == 12:  # UNIMPLEMENTED: a libgstab built without CUDA
            self.assertIn("built without CUDA", e.exception.message)
        else:  # FAILED_PRECONDITION: no GPU or driver here
            self.assertEqual(e.exception.code, 9, e.exception.message)
            self.assertIn("cannot use CUDA device 0 in this process", e.exception.message)


class BundleTest(unittest.TestCase):
    """Only with --bundle: everything came from the bundle, not from this machine."""

    # What a training image brings itself: the C/C++ runtime, the CUDA driver, NCCL.
    NOT_BUNDLED = re.compile(r"^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl|libpthread|librt|"
                             r"libstdc\+\+|libgcc_s|libcuda\.so|libnccl\.so|libnvidia)")

    def test_package_and_libraries_come_from_the_bundle(self):
        if not _BUNDLE:
            self.skipTest("no --bundle")
        bundle = os.path.realpath(_BUNDLE)
        lib = os.path.join(bundle, "lib")
        self.assertTrue(os.path.realpath(gstab.__file__).startswith(bundle + os.sep))
        gstab.load_library()
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if ".so" in line}
        self.assertIn(os.path.join(lib, "libgstab.so"), mapped)
        # Every other library libgstab.so needs resolves inside the bundle (a missing one
        # would come from this machine, which has them all; one the process had loaded before,
        # zlib for instance, is shared), and it never searches the current directory (an empty
        # RPATH entry).
        rpath = subprocess.run(["readelf", "-d", os.path.join(lib, "libgstab.so")],
                               capture_output=True, text=True, check=True).stdout
        entries = re.search(r"R(UN)?PATH.*\[(.*)\]", rpath).group(2).split(":")
        self.assertEqual(entries[0], "$ORIGIN/../lib")
        self.assertNotIn("", entries)
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        ldd = subprocess.run(["ldd", os.path.join(lib, "libgstab.so")], capture_output=True,
                             text=True, check=True, env=env).stdout
        resolved = [line.split() for line in ldd.splitlines() if "=>" in line]
        self.assertGreater(len(resolved), 20)
        for parts in resolved:
            if not self.NOT_BUNDLED.match(parts[0]):
                self.assertEqual(os.path.dirname(os.path.realpath(parts[2])), lib, parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library", help="default: where the package finds it")
    parser.add_argument("--bundle", help="import gstab from this client bundle")
    ARGS, rest = parser.parse_known_args()
    gstab.load_library(ARGS.library)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
