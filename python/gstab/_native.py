"""libgstab.so through ctypes: loading it, its functions' signatures and structs, and the
conversions between Python values and the C ABI's (client_lib/gstab.h). Internal to gstab."""

import ctypes
import operator
import os
from typing import Mapping, Optional, Union

DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}
REPLICATED, NODE_SHARDED = 1, 2  # GSTAB_TENSOR_REPLICATED, GSTAB_TENSOR_NODE_SHARDED
ELEMENT_SIZE = {"float32": 4, "bfloat16": 2, "float16": 2}

# Configuration settings: "policy=clip clip.max_norm=0.5", or the same as a dict
# {"policy": "clip", "clip.max_norm": 0.5}; the keys of gstab.v1.PolicyConfig (config.proto).
Config = Union[str, Mapping[str, object]]


# gRPC status codes by number, for messages.
CODE_NAMES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
              8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
              11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
              15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


class Error(RuntimeError):
    """A failed call: `code` is the gRPC status code, the message says what was wrong."""

    def __init__(self, code: int, message: str):
        super().__init__(f"gstab error {CODE_NAMES.get(code, code)}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):  # pickled whole, as when one rank's failure is broadcast to the others
        return Error, (self.code, self.message)


class CStepResult(ctypes.Structure):
    _fields_ = [("skip", ctypes.c_int), ("diverging", ctypes.c_int), ("spikes", ctypes.c_int),
                ("num_groups", ctypes.c_size_t), ("norm", ctypes.c_double),
                ("stabilized_norm", ctypes.c_double)]


class CAttachOptions(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_uint32), ("world_size", ctypes.c_uint32),
                ("local_rank", ctypes.c_uint32), ("local_world_size", ctypes.c_uint32),
                ("node_rank", ctypes.c_uint32), ("node_count", ctypes.c_uint32),
                ("rendezvous", ctypes.c_char_p), ("rendezvous_size", ctypes.c_size_t),
                ("policy", ctypes.c_char_p), ("config", ctypes.c_char_p)]


class CGroupResult(ctypes.Structure):
    _fields_ = [("group", ctypes.c_char_p), ("norm", ctypes.c_double),
                ("stabilized_norm", ctypes.c_double), ("scale", ctypes.c_double),
                ("z", ctypes.c_double), ("spike", ctypes.c_int), ("skipped", ctypes.c_int),
                ("diverging", ctypes.c_int)]


_lib = None


# The libgstab.so this package is built with: its structs and signatures are this version's.
VERSION = "0.2.0"


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Loads libgstab.so once and declares its functions."""
    global _lib
    if _lib is not None:
        if path and os.sep in path and os.sep in _lib._name and \
                os.path.realpath(path) != os.path.realpath(_lib._name):
            raise OSError(f"libgstab.so is loaded already, from {_lib._name}: a process uses one "
                          f"(asked for {path})")
        return _lib
    here = os.path.dirname(os.path.realpath(__file__))
    candidates = [os.path.join(here, "libgstab.so"),
                  os.path.join(here, "..", "..", "lib", "libgstab.so"), "libgstab.so"]
    if os.environ.get("GSTAB_LIBRARY"):  # named: no other one stands in for it
        candidates = [os.environ["GSTAB_LIBRARY"]]
        if os.sep in candidates[0] and not os.path.exists(candidates[0]):
            raise OSError(f"GSTAB_LIBRARY names {candidates[0]}, which does not exist")
    if path:  # asked for by name: no other one stands in for it
        candidates = [path]
        if os.sep in path and not os.path.exists(path):
            raise OSError(f"libgstab.so not found at {path}")
    errors = []
    for candidate in candidates:
        if not candidate or (os.sep in candidate and not os.path.exists(candidate)):
            continue
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError as e:
            # One that is there but does not load (a library it needs missing): its reason, not
            # another copy found further on (which may be of another build).
            if os.sep in candidate:
                raise OSError(f"{candidate} was found but cannot be loaded: {e}") from None
            errors.append(str(e))
    else:
        raise OSError("libgstab.so not found: set GSTAB_LIBRARY to its path (a build has it in "
                      "build/client_lib/); tried: " + "; ".join(errors or ["nothing found"]))
    P, S, U32, U64, I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    PP = ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        "gstab_version": ([], S), "gstab_last_error": ([], S),
        "gstab_last_step_unanswered": ([], I),
        "gstab_connect": ([S, PP], I), "gstab_client_destroy": ([P], None),
        "gstab_attach": ([P, S, U32, U32, U32, U32, S], I), "gstab_detach": ([P], I),
        "gstab_attach_with_options": ([P, S, ctypes.POINTER(CAttachOptions)], I),
        "gstab_attach_restored": ([P], I),
        "gstab_create_rendezvous": ([P, S, U32, I, PP, ctypes.POINTER(ctypes.c_size_t)], I),
        "gstab_daemon_instance": ([P, ctypes.c_char_p], I),
        "gstab_update_config": ([P, S, ctypes.POINTER(ctypes.c_uint64)], I),
        "gstab_export_state": ([P, PP, ctypes.POINTER(ctypes.c_size_t)], I),
        "gstab_import_state": ([P, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(U32)], I),
        "gstab_import_statistics": ([P, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(U32)],
                                    I),
        "gstab_get_stats_json": ([P, PP], I), "gstab_free": ([P], None),
        "gstab_arena_create": ([PP], I), "gstab_arena_destroy": ([P], None),
        "gstab_arena_add_tensor_flags": ([P, S, U64, I, S, U32, ctypes.POINTER(ctypes.c_size_t)],
                                         I),
        "gstab_arena_allocate": ([P], I), "gstab_arena_data": ([P, ctypes.c_size_t], P),
        "gstab_arena_unlink": ([P], None),
        "gstab_register_arena": ([P, P], I),
        "gstab_step": ([P, U64, ctypes.POINTER(CStepResult)], I),
        "gstab_step_group": ([P, ctypes.c_size_t, ctypes.POINTER(CGroupResult)], I),
        "gstab_step_statistics_rolled_back": ([P], U64), "gstab_step_not_applied": ([P], S),
        "gstab_cuda_gradients_create": ([I, PP], I), "gstab_cuda_gradients_destroy": ([P], None),
        "gstab_cuda_add_tensor_flags": ([P, S, P, U64, I, S, U32], I),
        "gstab_cuda_allocate_tensor_flags": ([P, S, U64, I, S, U32, PP], I),
        "gstab_register_cuda": ([P, P], I),
        "gstab_cuda_step": ([P, P, U64, P, ctypes.POINTER(CStepResult),
                             ctypes.POINTER(ctypes.c_uint64)], I),
        "gstab_cuda_results": ([P, ctypes.POINTER(ctypes.c_size_t)], P),
        "gstab_cuda_group_name": ([P, ctypes.c_size_t], S),
    }
    for name, (args, restype) in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            version = lib.gstab_version().decode() if hasattr(lib, "gstab_version") else "unknown"
            raise OSError(f"{lib._name} (version {version}) lacks {name}, which this package "
                          "needs: use the libgstab.so built with the package") from None
        fn.argtypes, fn.restype = args, restype
    if lib.gstab_version().decode() != VERSION:
        raise OSError(f"{lib._name} is version {lib.gstab_version().decode()}, and this package "
                      f"{VERSION}: use the libgstab.so built with the package")
    _lib = lib
    return lib


def check(status: int) -> None:
    if status != 0:
        raise Error(status, _lib.gstab_last_error().decode(errors="replace"))


def dtype_code(dtype: str) -> int:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def dtype_of(tensor) -> str:
    """The gstab dtype name of a torch tensor (or anything whose str(dtype) ends in one)."""
    name = str(tensor.dtype).rsplit(".", 1)[-1]
    if name not in DTYPES:
        raise ValueError(f"gstab stabilizes float32, bfloat16 and float16 gradients, not {name}")
    return name


def enc(text: Optional[str], what: str = "text") -> Optional[bytes]:
    """A name or setting as the C ABI's NUL-terminated UTF-8 (ValueError for a NUL in it, which
    would cut it short; UnicodeEncodeError, a ValueError, for a lone surrogate)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if "\0" in text:
        raise ValueError(f"{what} {text!r} contains a NUL character")
    return text.encode()


def enc_path(path: str) -> bytes:
    """A socket path or HOST:PORT as the file system spells it (any bytes but NUL)."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"socket path {path!r} contains a NUL character")
    return raw


def uint(what: str, value: int, bits: int) -> int:
    """`value` for a C unsigned integer of `bits` bits, which ctypes would wrap silently (-1
    becoming 2^64-1, a step past every later one)."""
    try:
        value = operator.index(value)  # an int, or anything that is one (numpy's, say)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if not 0 <= value < 2 ** bits:
        raise ValueError(f"{what} {value} is out of range: 0 to 2^{bits}-1")
    return value


def flags(replicated: bool, node_sharded: bool) -> int:
    return (REPLICATED if replicated else 0) | (NODE_SHARDED if node_sharded else 0)


def settings(config: Optional[Config]) -> Optional[bytes]:
    """Config as the C ABI's settings text."""
    if config is None or isinstance(config, str):
        return enc(config)
    items = []
    for key, value in config.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        key, value = str(key), str(value)
        # The text is KEY=VALUE settings apart by whitespace or commas: neither may hold one.
        if not key or not value or "=" in key or \
                any(c.isspace() or c == "," for c in key + value):
            raise ValueError(f"config setting {key!r}: {value!r}: keys and values are single "
                             "words (no spaces or commas; no '=' in a key), such as "
                             "{'clip.max_norm': 0.5}")
        items.append(f"{key}={value}")
    return enc(" ".join(items), "config")


# The 64-bit integer fields of GetStatsResponse, which proto3's JSON mapping writes as strings
# (client_test.py checks that no number of the stats is left a string).
UINT64_FIELDS = {"steps", "last_step", "registered_bytes", "accepted_steps", "spikes",
                  "non_finite_steps", "version", "effective_step", "waiting_step"}


# proto3's JSON writes non-finite doubles as these strings.
NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def json_numbers(value, key=None):
    """The JSON's numbers as Python numbers: 64-bit integers from their strings, and non-finite
    doubles (names, the only other strings with such values, are left alone)."""
    if isinstance(value, dict):
        return {k: json_numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [json_numbers(v, key) for v in value]
    if isinstance(value, str):
        if key in UINT64_FIELDS:
            return int(value)
        if key not in ("job", "group") and value in NON_FINITE:
            return NON_FINITE[value]
    return value


def take(call) -> bytes:
    """Runs call(pointer, size) of a function that hands out bytes, and frees them."""
    data, size = ctypes.c_void_p(), ctypes.c_size_t()
    check(call(ctypes.byref(data), ctypes.byref(size)))
    try:
        return ctypes.string_at(data, size.value)
    finally:
        _lib.gstab_free(data)


# gRPC status codes the client acts on.
UNAVAILABLE, UNAUTHENTICATED, FAILED_PRECONDITION, NOT_FOUND, DATA_LOSS = 14, 16, 9, 5, 15
UNIMPLEMENTED, ABORTED = 12, 10
