"""What gstab.torch and gstab.jax cost a step on the CPU backend, beside in-process baselines
measured in the same run.

    frameworks_bench.py --gstabd PATH [--library PATH] [--iters 30]

Gradients shaped like a 7.3M-parameter LLaMA-style model (39 fp32 tensors, the set of
gpu_step_bench.py). Rows, medians of --iters steps (wall time, the step's results in hand):
  copy                  one host copy of the gradients' bytes (a yardstick)
  torch clip            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), in process
  gstab.torch           Stabilizer.step with the gradients in place (zero_grad(set_to_none=False))
  gstab.torch, copied   the same after set_to_none=True: each gradient copied back first
  jax clip (jit)        a jitted global-norm clip of the tree, in process
  gstab.jax             Stabilizer.step: the tree copied in, stabilized, copied out as new arrays
gstabd runs on the CPU backend with its default threads and shares the machine with this
process; it is started before the first row, so the baselines run beside it too.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "python"))
sys.path.insert(0, os.path.join(here, "..", "tests", "python"))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import gstab  # noqa: E402
import gstab.jax  # noqa: E402
import gstab.torch  # noqa: E402
from gpu_step_bench import SETS  # noqa: E402
from gstabd import Gstabd  # noqa: E402


def median_ms(fn, iters, before=None):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library")
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    gstab.load_library(args.library)
    shapes = SETS["7.3M"]
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.empty(s)) for s in shapes]
    grads = [torch.randn(s) * 1e-3 for s in shapes]
    nbytes = sum(g.numel() * g.element_size() for g in grads)
    src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
    rows = {}
    # gstabd first: every row, the baselines too, runs beside the same (idle) gstabd.
    daemon = Gstabd(args.gstabd)
    try:
        rows["copy"] = median_ms(lambda: dst.copy_(src), args.iters)

        for p, g in zip(params, grads):
            p.grad = g.clone()
        rows["torch clip"] = median_ms(
            lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), args.iters,
            lambda: torch._foreach_copy_([p.grad for p in params], grads))

        client = gstab.Client(daemon.socket)
        client.attach("bench-torch", policy="stabilize")
        stabilizer = gstab.torch.Stabilizer(client, [(f"t{i}", p) for i, p in enumerate(params)])
        step = iter(range(1, 1 << 30))
        restore = lambda: torch._foreach_copy_(stabilizer.gradients, grads)  # noqa: E731
        rows["gstab.torch"] = median_ms(lambda: stabilizer.step(next(step)), args.iters, restore)

        def replace():
            for p, g in zip(params, fresh):
                p.grad = g
        fresh = [g.clone() for g in grads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one set_to_none warning
            rows["gstab.torch, copied"] = median_ms(lambda: stabilizer.step(next(step)),
                                                    args.iters, replace)
        client.detach()

        tree = {f"t{i}": jnp.asarray(g.numpy()) for i, g in enumerate(grads)}

        @jax.jit
        def clip(tree):
            norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))
            return jax.tree_util.tree_map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), tree)
        rows["jax clip (jit)"] = median_ms(lambda: jax.block_until_ready(clip(tree)), args.iters)

        client = gstab.Client(daemon.socket)
        client.attach("bench-jax", policy="stabilize")
        jax_stabilizer = gstab.jax.Stabilizer(client, tree)
        rows["gstab.jax"] = median_ms(
            lambda: jax.block_until_ready(jax_stabilizer.step(tree, next(step))[0]), args.iters)
        client.detach()
    finally:
        daemon.stop()

    print(f"7.3M set ({len(shapes)} fp32 tensors, {nbytes / 1e6:.1f} MB), CPU backend, "
          f"medians of {args.iters}; torch {torch.__version__}, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"  {'':24} {'ms':>8} {'x copy':>8}")
    for name, ms in rows.items():
        print(f"  {name:24} {ms:8.2f} {ms / rows['copy']:8.2f}")
    print(f"  gstab.torch / torch clip: {rows['gstab.torch'] / rows['torch clip']:.2f}; "
          f"gstab.jax / gstab.torch: {rows['gstab.jax'] / rows['gstab.torch']:.2f}")


if __name__ == "__main__":
    main()
