"""libgstab.so's C ABI (client_lib/gstab.h) as the Python package loads it, with no gstabd: the
header's numbers are the package's, and the library's own checks of its arguments.

    c_abi_test.py --library PATH
    c_abi_test.py --bundle DIR    # scripts/client-bundle's DIR: package and library from DIR

The package over a real gstabd: client_test.py.
"""
import argparse
import ctypes
import os
import re
import sys
import unittest

import package_path  # first: the folder gstab comes from
BUNDLE = package_path.first_on_sys_path()
import gstab  # noqa: E402


class CAbiTest(unittest.TestCase):
    def test_the_packages_flags_and_status_codes_are_the_headers(self):
        # The bundle's own header, where the package comes from a bundle.
        with open(os.path.join(BUNDLE, "include", "gstab", "gstab.h") if BUNDLE else
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                               "client_lib", "gstab.h")) as f:
            header = f.read()
        flags = dict(re.findall(r"#define GSTAB_(FLAG_\w+) \(1u << (\d+)\)", header))
        self.assertEqual(len(flags), 11)
        for name, bit in flags.items():
            self.assertEqual(getattr(gstab, name), 1 << int(bit), name)
        status_block = header[header.index("typedef int gstab_status;"):].split("\n\n")[0]
        codes = dict(re.findall(r"#define GSTAB_([A-Z_]+) (\d+)", status_block))
        self.assertGreater(len(codes), 10)
        for name, code in codes.items():
            if name != "OK":
                self.assertEqual(gstab.StatusCode[name], int(code), name)
        # The structs as the library pins them (client_lib/c_api.cc's static_asserts): the
        # package's ctypes copies must lay them out the same.
        from gstab._native import CAttachOptions, CGroupResult, CStepResult
        self.assertEqual([ctypes.sizeof(c) for c in (CStepResult, CGroupResult, CAttachOptions)],
                         [40, 56, 56])
        self.assertEqual((CStepResult.num_groups.offset, CStepResult.stabilized_norm.offset,
                          CGroupResult.z.offset, CGroupResult.diverging.offset,
                          CAttachOptions.rendezvous.offset, CAttachOptions.config.offset),
                         (16, 32, 32, 48, 24, 48))

    def test_the_librarys_own_checks_say_what_was_wrong(self):
        lib, h = gstab.load_library(), ctypes.c_void_p()
        self.assertEqual(lib.gstab_arena_create(ctypes.byref(h)), 0)
        self.assertEqual(lib.gstab_arena_add_tensor_flags(h, b"x", 4, 0, b"", 6, None), 3)
        self.assertIn("unknown tensor flags 0x4", lib.gstab_last_error().decode())
        self.assertEqual(lib.gstab_arena_add_tensor_flags(h, b"x", 4, 0, b"", 3, None), 3)
        self.assertIn("not both", lib.gstab_last_error().decode())
        self.assertEqual(lib.gstab_arena_add_tensor_flags(h, b"x", 4, 7, b"", 0, None), 3)
        self.assertIn("unknown dtype 7", lib.gstab_last_error().decode())
        self.assertIsNone(lib.gstab_arena_data(h, 0))  # each NULL says why
        self.assertIn("tensor 0 is past the arena's 0 tensors", lib.gstab_last_error().decode())
        self.assertIsNone(lib.gstab_arena_data(None, 0))
        self.assertIn("arena must not be NULL", lib.gstab_last_error().decode())
        lib.gstab_arena_destroy(h)
        self.assertEqual(lib.gstab_step_not_applied(None), b"")

    def test_a_failed_calls_out_parameters_are_set(self):
        lib = gstab.load_library()
        # A failed call's pointer out-parameters are NULL, not what the caller had there (a
        # cleanup path would free that).
        h = ctypes.c_void_p(0x1234)
        self.assertEqual(lib.gstab_connect(b"/nonexistent/gstabd.sock", ctypes.byref(h)),
                         gstab.StatusCode.UNAVAILABLE)
        self.assertIsNone(h.value)
        # Also when the handle itself is NULL (a connect that failed, then a cleanup path).
        size = ctypes.c_size_t(7)
        for call, sized in (
                (lambda: lib.gstab_cuda_allocate_tensor_flags(None, b"x", 4, 0, b"", 1,
                                                              ctypes.byref(h)), False),
                (lambda: lib.gstab_export_state(None, ctypes.byref(h), ctypes.byref(size)), True),
                (lambda: lib.gstab_create_rendezvous(None, b"j", 2, 0, ctypes.byref(h),
                                                     ctypes.byref(size)), True),
                (lambda: lib.gstab_get_stats_json(None, ctypes.byref(h)), False)):
            h.value, size.value = 0x1234, 7
            status = call()
            if status == 12:  # a library built without CUDA, for the CUDA call
                self.assertIn("without CUDA", lib.gstab_last_error().decode())
            else:
                self.assertEqual(status, 3)
                self.assertIn("must not be NULL", lib.gstab_last_error().decode())
            self.assertIsNone(h.value)
            self.assertEqual(size.value, 0 if sized else 7)
        # The other out-parameters: counts, versions and step numbers 0, an index SIZE_MAX,
        # results all zeros.
        from gstab._native import CGroupResult, CStepResult
        index, count, version = ctypes.c_size_t(7), ctypes.c_uint32(7), ctypes.c_uint64(7)
        step = ctypes.c_uint64(7)
        self.assertEqual(lib.gstab_arena_add_tensor_flags(None, b"x", 4, 0, b"", 0,
                                                          ctypes.byref(index)), 3)
        self.assertEqual(index.value, 2**64 - 1)
        self.assertEqual(lib.gstab_import_state(None, b"x", 1, ctypes.byref(count)), 3)
        self.assertEqual(count.value, 0)
        self.assertEqual(lib.gstab_update_config(None, b"clip.max_norm=2", ctypes.byref(version)),
                         3)
        self.assertEqual(version.value, 0)
        result = CStepResult(skip=1, num_groups=7, norm=1.5)
        self.assertEqual(lib.gstab_step(None, 1, ctypes.byref(result)), 3)
        self.assertEqual((result.skip, result.num_groups, result.norm), (0, 0, 0.0))
        result = CStepResult(skip=1, num_groups=7, norm=1.5)
        self.assertIn(lib.gstab_cuda_step(None, None, 1, None, ctypes.byref(result),
                                          ctypes.byref(step)), (3, 12))
        self.assertEqual((result.skip, result.num_groups, result.norm, step.value), (0, 0, 0.0, 0))
        group = CGroupResult(norm=2.5, spike=1)
        self.assertEqual(lib.gstab_step_group(None, 0, ctypes.byref(group)), 3)
        self.assertEqual((group.norm, group.spike, group.group), (0.0, 0, None))
        instance = ctypes.create_string_buffer(b"x" * 32)
        self.assertEqual(lib.gstab_daemon_instance(None, instance), 3)
        self.assertEqual(instance.value, b"")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", help="default: where the package finds it")
    parser.add_argument("--bundle", help="import gstab from this client bundle")
    args, rest = parser.parse_known_args()
    gstab.load_library(args.library)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
