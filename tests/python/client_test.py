"""The Python package (python/gstab, ctypes over libgstab.so) against a real gstabd.

    client_test.py --gstabd PATH --library PATH
    client_test.py --gstabd PATH --bundle DIR    # scripts/client-bundle's DIR, as a training
                                                 # image uses it: package and libraries from DIR
"""
import argparse
import ctypes
import math
import os
import re
import struct
import subprocess
import sys
import unittest

_where = argparse.ArgumentParser(add_help=False)
_where.add_argument("--bundle")
_BUNDLE = _where.parse_known_args()[0].bundle
sys.path.insert(0, os.path.join(_BUNDLE, "python") if _BUNDLE else
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import gstab  # noqa: E402
from gstabd import Gstabd  # noqa: E402

ARGS = None


def bf16_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def float_to_bf16(x: float) -> int:  # exact for the values used here (8 significant bits)
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


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
        self.assertEqual(gstab.load_library().gstab_version().decode(), "0.1.0")

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
        self.assertTrue(g.spike, "the 1e4x step is a spike")
        self.assertLess(g.scale, 1e-2, "the spike's magnitude is replaced")
        client.detach()

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

    def test_bad_input_raises_errors_that_say_what_was_wrong(self):
        client = gstab.Client(self.socket)
        with self.assertRaises(gstab.Error) as e:
            client.attach("py-bad", policy="clipp")
        self.assertEqual(e.exception.code, 3)
        self.assertIn("unknown policy 'clipp'", e.exception.message)
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
        # The C ABI's own checks, below the package's.
        lib, h = gstab.load_library(), ctypes.c_void_p()
        self.assertEqual(lib.gstab_arena_create(ctypes.byref(h)), 0)
        self.assertEqual(lib.gstab_arena_add_tensor_flags(h, b"x", 4, 0, b"", 6, None), 3)
        self.assertIn("unknown tensor flags 0x6", lib.gstab_last_error().decode())
        self.assertEqual(lib.gstab_arena_add_tensor_flags(h, b"x", 4, 7, b"", 0, None), 3)
        self.assertIn("unknown dtype 7", lib.gstab_last_error().decode())
        lib.gstab_arena_destroy(h)
        self.assertEqual(lib.gstab_cuda_allocate_tensor_flags(None, b"x", 4, 0, b"", 1,
                                                              ctypes.byref(h)), 3)
        self.assertIn("must not be NULL", lib.gstab_last_error().decode())

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

    def test_absent_daemon_is_unavailable(self):
        with self.assertRaises(gstab.Error) as e:
            gstab.Client(os.path.join(self.dir.name, "nobody.sock")).attach("py-absent")
        self.assertEqual(e.exception.code, 14)

    def test_cuda_gradients_fail_cleanly_without_a_gpu(self):
        if os.path.exists("/dev/nvidia0"):
            self.skipTest("this machine has a GPU")
        with self.assertRaises(gstab.Error) as e:
            gstab.CudaGradients(0)
        self.assertNotEqual(e.exception.message, "")


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
