"""What gstab.torch costs a step of an FSDP2 job on the CPU backend, beside PyTorch's own
clipping of the same sharded gradients, measured in the same run.

    fsdp_bench.py --gstabd PATH [--library PATH] [--iters 30] [--ranks 2]

Starts a gstabd (CPU backend) and --ranks processes under torchrun (Gloo), each holding its
FSDP2 shard of gradients shaped like the 7.3M-parameter set of gpu_step_bench.py (39 fp32
tensors). Both rows produce the whole gradient's norm on every rank and scale the shards:
  torch clip    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True) on the DTensor
                gradients (local sums of squares, then an all-reduce over Gloo)
  gstab.torch   Stabilizer.step: gstabd sums the ranks' shards itself (one node: no collective)
Medians of --iters steps of rank 0's wall time, every rank starting each step together (a
barrier, outside the timing). gstabd and the ranks share the machine.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "python"))
sys.path.insert(0, os.path.join(here, "..", "tests", "python"))


def median_ms(fn, iters, before):
    import torch.distributed as dist
    times = []
    for _ in range(iters + 1):  # the first is a warm-up
        before()
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def worker(args):
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import gstab
    import gstab.torch
    from gpu_step_bench import SETS

    gstab.load_library(args.library)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    shapes = SETS["7.3M"]
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(s)) for s in shapes])
    fully_shard(model)
    params = list(model.parameters())
    local = [p.to_local() for p in params]
    torch.manual_seed(1 + rank)
    grads = [torch.randn(t.shape) * 1e-3 for t in local]

    client = gstab.Client(args.socket)
    gstab.torch.attach(client, "bench-fsdp", policy="stabilize")
    stabilizer = gstab.torch.Stabilizer(client, [(f"t{i}", p) for i, p in enumerate(params)])
    restore = lambda: torch._foreach_copy_(stabilizer.gradients, grads)  # noqa: E731
    step = iter(range(1, 1 << 30))
    rows = {"torch clip": median_ms(
        lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), args.iters, restore)}
    rows["gstab.torch"] = median_ms(lambda: stabilizer.step(next(step)), args.iters, restore)
    client.detach()
    if rank == 0:
        nbytes = sum(g.numel() * 4 for g in grads)
        print(f"7.3M set over {dist.get_world_size()} FSDP2 ranks ({len(shapes)} fp32 tensors, "
              f"rank 0's shards {nbytes / 1e6:.1f} MB), CPU backend, medians of {args.iters}; "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs")
        print(f"  {'':14} {'ms':>8}")
        for name, ms in rows.items():
            print(f"  {name:14} {ms:8.2f}")
        print(f"  gstab.torch / torch clip: {rows['gstab.torch'] / rows['torch clip']:.2f}",
              flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gstabd", help="gstabd to start (the launcher)")
    parser.add_argument("--library")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--socket", help=argparse.SUPPRESS)  # a rank's, from the launcher
    args = parser.parse_args()
    if args.socket:
        worker(args)
        return
    if not args.gstabd:
        parser.error("--gstabd is required")
    from gstabd import Gstabd
    daemon = Gstabd(args.gstabd)
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.ranks}", os.path.abspath(__file__),
                   "--socket", daemon.socket, "--iters", str(args.iters)]
        if args.library:
            command += ["--library", os.path.abspath(args.library)]
        subprocess.run(command, check=True)
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
