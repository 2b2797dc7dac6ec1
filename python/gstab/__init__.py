"""gstab for Python: attach a training loop to gstabd through libgstab.so (ctypes, no build).

CPU backend (host shared memory)::

    import gstab
    client = gstab.Client("/run/gstab/gstabd.sock")
    client.attach("my-job", policy="stabilize")
    arena = gstab.Arena()
    w = arena.add_tensor("fc1.weight", 4096, "float32")
    arena.allocate()
    grad = arena.view(w)              # a memoryview of 4096 floats: write gradients here
    client.register_arena(arena)
    result = client.step(1)           # stabilized in place; result.skip, result.groups, ...

CUDA backend (tensors stay in the GPU's memory; PyTorch shown, any device pointer works)::

    grads = gstab.CudaGradients(device=0)
    for name, p in model.named_parameters():
        grads.add_tensor(name, p.grad.data_ptr(), p.grad.numel(), gstab.dtype_of(p.grad), "all")
    client.register_cuda(grads)
    # each step, after backward (keep p.grad allocated: zero_grad(set_to_none=False)):
    client.cuda_step(grads, step, torch.cuda.current_stream().cuda_stream)

PyTorch models and JAX trees in a few lines: gstab.torch.Stabilizer and gstab.jax.Stabilizer.

libgstab.so is $GSTAB_LIBRARY when that is set (and nothing else), else found next to this
package, then in the lib/ beside its folder (scripts/client-bundle's layout: OUT/python/gstab,
OUT/lib), then on the loader's path. It must be this package's version (gstab.__version__).
"""

import enum

from ._native import (CODE_NAMES, DATA_LOSS, FAILED_PRECONDITION, NOT_FOUND, UNAUTHENTICATED,
                      UNAVAILABLE, Config, Error, dtype_of, load_library, VERSION)
from ._buffers import Arena, CudaGradients
from ._results import (FLAG_ACCEPTED, FLAG_CLIPPED, FLAG_DIVERGING, FLAG_MISMATCH, FLAG_SKIPPED,
                       FLAG_SPIKE, FLAG_SPIKE_RATIO, FLAG_UNREGISTERED, FLAG_VOIDED,
                       FLAG_WITH_STEP, FLAG_ZERO_NORM, GroupResult, StepResult)
from ._client import DEFAULT_SOCKET, Client, rendezvous_bytes

__version__ = VERSION  # and that of the libgstab.so it loads, which it checks

__all__ = ["Error", "Client", "Arena", "CudaGradients", "StepResult", "GroupResult",
           "StatusCode", "dtype_of", "load_library", "FLAG_ACCEPTED", "FLAG_SKIPPED",
           "FLAG_ZERO_NORM", "FLAG_SPIKE", "FLAG_SPIKE_RATIO", "FLAG_DIVERGING", "FLAG_CLIPPED",
           "FLAG_MISMATCH", "FLAG_VOIDED", "FLAG_WITH_STEP", "FLAG_UNREGISTERED"]

# Error.code: gRPC's status codes (`except gstab.Error as e: if e.code == StatusCode.DATA_LOSS`).
StatusCode = enum.IntEnum("StatusCode", {name: code for code, name in CODE_NAMES.items()})

# A traceback says gstab.Error, the name users catch, not gstab._native.Error.
Error.__module__ = __name__
