"""The gradients gstabd stabilizes in place: an Arena in host shared memory (the CPU backend)
and CudaGradients in device memory (the CUDA backend). Re-exported by the gstab package."""

import ctypes
import os
import weakref
from typing import List

from ._native import (ELEMENT_SIZE, FAILED_PRECONDITION, Error, check, dtype_code, enc, flags,
                      load_library, uint)

# Arenas still alive then have their shared memory removed from /dev/shm: a framework's tensors
# over an arena (torch.frombuffer) keep it alive past the interpreter's end, and nothing would
# remove the object after (on Kubernetes, where each pod has its own pids, nothing ever would).
_live_arenas = weakref.WeakSet()


def _check_numel(name: str, numel: int) -> None:
    uint(f"tensor {name!r}: numel", numel, 64)



class Arena:
    """Gradients in host shared memory that gstabd maps (the CPU backend)."""

    def __init__(self):
        self._lib = load_library()
        self._h = ctypes.c_void_p()
        check(self._lib.gstab_arena_create(ctypes.byref(self._h)))
        self._tensors = []  # (numel, dtype)
        _live_arenas.add(self)

    def add_tensor(self, name: str, numel: int, dtype: str = "float32", group: str = "",
                   replicated: bool = False, node_sharded: bool = False) -> int:
        """Adds a tensor (before allocate()); returns its index. group "": a group of its own,
        named after the tensor (another tensor may not name it; give both that name to share it).
        How its group's norm combines the ranks' gradients: sharded by default (each rank
        holds a slice); replicated: every rank holds the whole gradient (as after DDP's
        all-reduce); node_sharded: each node holds it whole, sliced across its ranks (HSDP)."""
        _check_numel(name, numel)
        index = ctypes.c_size_t()
        check(self._lib.gstab_arena_add_tensor_flags(
            self._h, enc(name, "tensor name"), numel, dtype_code(dtype), enc(group, "group"),
            flags(replicated, node_sharded), ctypes.byref(index)))
        self._tensors.append((numel, dtype))
        return index.value

    def allocate(self) -> None:
        check(self._lib.gstab_arena_allocate(self._h))

    def buffer(self, index: int) -> memoryview:
        """The tensor's memory as bytes (format 'B'), for torch.frombuffer and the like."""
        if not 0 <= index < len(self._tensors):
            raise IndexError(f"tensor {index} does not exist: the arena has {len(self._tensors)}")
        numel, dtype = self._tensors[index]
        address = self._lib.gstab_arena_data(self._h, index)
        if not address:  # not allocated, or a forked child's inherited arena
            raise Error(FAILED_PRECONDITION,
                        self._lib.gstab_last_error().decode(errors="replace")
                        .replace("gstab_arena_allocate", "allocate()"))
        raw = (ctypes.c_ubyte * (numel * ELEMENT_SIZE[dtype])).from_address(address)
        raw._arena = self  # the mapping lives as long as any view of it
        return memoryview(raw).cast("B")

    def view(self, index: int) -> memoryview:
        """The tensor's memory: format 'f' for float32, 'H' (raw bits) for the 16-bit types."""
        return self.buffer(index).cast("f" if self._tensors[index][1] == "float32" else "H")

    def array(self, index: int):
        """The tensor's memory as a flat numpy array (bfloat16 through ml_dtypes); needs numpy."""
        import numpy as np
        dtype = self._tensors[index][1] if 0 <= index < len(self._tensors) else None
        if dtype == "bfloat16":
            import ml_dtypes
            dtype = ml_dtypes.bfloat16
        return np.frombuffer(self.buffer(index), dtype=dtype)

    def _zero(self) -> None:
        for index, (numel, dtype) in enumerate(self._tensors):
            address = self._lib.gstab_arena_data(self._h, index)
            if address:  # none: not allocated (nothing to zero)
                ctypes.memset(address, 0, numel * ELEMENT_SIZE[dtype])

    def __del__(self):
        if getattr(self, "_h", None):
            self._lib.gstab_arena_destroy(self._h)
            self._h = None


class CudaGradients:
    """Gradients in CUDA device memory (any framework's pointers) and the step's events."""

    def __init__(self, device: int = 0):
        """`device`: the CUDA ordinal, or a torch.device("cuda", N)."""
        if getattr(device, "type", None) == "cuda" and hasattr(device, "index"):
            if device.index is None:
                raise ValueError("device: a torch.device with its ordinal (cuda:N), not 'cuda'")
            device = device.index
        device = uint("device", device, 31)
        self._lib = load_library()
        self._h = ctypes.c_void_p()
        check(self._lib.gstab_cuda_gradients_create(device, ctypes.byref(self._h)))
        self._pid = os.getpid()

    def add_tensor(self, name: str, device_ptr: int, numel: int, dtype: str,
                   group: str = "", replicated: bool = False, node_sharded: bool = False) -> None:
        """As Arena.add_tensor (but returning nothing), for `numel` elements at `device_ptr`, an
        address (a tensor's data_ptr())."""
        _check_numel(name, numel)
        device_ptr = uint(f"tensor {name!r}: device_ptr (an address: tensor.data_ptr())",
                          device_ptr, 64)
        check(self._lib.gstab_cuda_add_tensor_flags(
            self._h, enc(name, "tensor name"), ctypes.c_void_p(device_ptr), numel,
            dtype_code(dtype), enc(group, "group"), flags(replicated, node_sharded)))

    def allocate_tensor(self, name: str, numel: int, dtype: str, group: str = "",
                        replicated: bool = False, node_sharded: bool = False) -> int:
        """Device memory for a tensor, owned by this object; returns its address. Each is a
        multiple of 2 MiB (CUDA IPC shares memory in such blocks): for many small tensors,
        allocate one and add_tensor its slices."""
        _check_numel(name, numel)
        ptr = ctypes.c_void_p()
        check(self._lib.gstab_cuda_allocate_tensor_flags(
            self._h, enc(name, "tensor name"), numel, dtype_code(dtype), enc(group, "group"),
            flags(replicated, node_sharded), ctypes.byref(ptr)))
        return ptr.value

    def results(self):
        """(device address, bytes) of the per-step results buffer, after Client.register_cuda:
        a gstab_results_header (step: uint64, num_groups: uint32, flags: uint32, the OR of the
        groups' FLAG_ bits), then one gstab_group_outcome per group in group_names()' order
        (norm, stabilized_norm, scale, z: float64; flags: uint32; 4 bytes reserved). Kernels on
        the step's stream may read it once cuda_step returns."""
        size = ctypes.c_size_t()
        address = self._lib.gstab_cuda_results(self._h, ctypes.byref(size))
        if not address:
            raise Error(FAILED_PRECONDITION, "these gradients have no results buffer: register "
                        "them first (Client.register_cuda), in the process that made them")
        return address, size.value

    def group_names(self) -> List[str]:
        """The groups of the results buffer's outcomes, in its order (after register_cuda)."""
        if os.getpid() != self._pid:  # the library answers none there, as for no groups
            raise Error(FAILED_PRECONDITION, f"these CUDA gradients were made by process "
                        f"{self._pid}, not this one ({os.getpid()}): a forked child makes its own")
        names = []
        while True:
            name = self._lib.gstab_cuda_group_name(self._h, len(names))
            if name is None:
                return names
            names.append(name.decode())

    def __del__(self):
        if getattr(self, "_h", None):
            self._lib.gstab_cuda_gradients_destroy(self._h)
            self._h = None
