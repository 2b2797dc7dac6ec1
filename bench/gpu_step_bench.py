"""The whole gstab step on the GPU against torch's in-process clipping, on the same tensors.

For LLaMA-style gradient sets (the 1.34B-parameter model: 219 tensors, hidden 2048, MLP 5461,
24 layers, vocabulary 32000; and a 7.3M-parameter one) and one 4096-element tensor (the fixed
cost of a step), in bf16 and fp32, medians of CUDA-event
timings in one run of:
  copy   a device-to-device copy of the same bytes (the floor is 1.5x this: one read for the
         norm, one read and one write for the scale)
  torch  torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
  gstab  one step through a real gstabd (--backend=cuda) over CUDA IPC, GPU time from the
         worker's `ready` to `done` as its stream sees it; the stabilize policy, one global group
Each is timed after a GPU sleep (all three alike), which hides the host's launches and, for
gstab, its round trip to gstabd: only GPU work is timed.
Needs PyTorch with CUDA. Run from the repository root (or the GPU bundle):
  python3 bench/gpu_step_bench.py --gstabd PATH --library PATH/libgstab.so [--out DIR]
      [--gstabd_library_path DIRS] [--sets 1.34B 7.3M 4K] [--dtypes bfloat16 float32]
      [--gstabd_flags=FLAG ...]  (the = form: a flag's leading dashes are not taken as ours)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import gstab  # noqa: E402


def llama_shapes(hidden, mlp, layers, vocab):
    shapes = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(hidden, hidden)] * 4 + [(mlp, hidden)] * 2 + [(hidden, mlp)] + [(hidden,)] * 2
    return shapes + [(hidden,), (vocab, hidden)]


SETS = {
    "1.34B": llama_shapes(2048, 5461, 24, 32000),
    "7.3M": llama_shapes(256, 683, 4, 8000),
    "4K": [(4096,)],  # one small tensor: the step's fixed cost alone
}


# About 25 ms on an H100 or H200: longer than any host work it hides.
GPU_SLEEP_CYCLES = 50_000_000


def median_ms(fn, iters, before=None):
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def start_gstabd(path, folder, log_path, library_path, flags):
    sock = os.path.join(folder, "gstabd.sock")
    env = dict(os.environ)
    if library_path:
        env["LD_LIBRARY_PATH"] = library_path
    daemon = subprocess.Popen([path, f"--socket={sock}", f"--state_dir={folder}/state",
                               "--backend=cuda", "--metrics_port=-1", "--lease_ms=60000"] + flags,
                              stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                              env=env)
    deadline = time.time() + 60
    while not os.path.exists(sock):
        if daemon.poll() is not None or time.time() > deadline:
            raise RuntimeError("gstabd did not start: " + open(log_path).read())
        time.sleep(0.05)
    return daemon, sock


def bench_set(name, shapes, dtype, sock, iters, job):
    torch.manual_seed(0)
    grads = [torch.randn(s, device="cuda", dtype=dtype) * 1e-3 for s in shapes]
    pristine = [g.clone() for g in grads]
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.empty_like(g))
        p.grad = g
        params.append(p)
    numel = sum(g.numel() for g in grads)
    nbytes = sum(g.numel() * g.element_size() for g in grads)
    restore = lambda: torch._foreach_copy_(grads, pristine)  # noqa: E731

    # Each timing sleeps on the GPU first, so that the host has enqueued all of the timed work
    # before the start event: GPU time alone, the host's launch gaps hidden alike for all three.
    sleep = lambda: torch.cuda._sleep(GPU_SLEEP_CYCLES)  # noqa: E731
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), iters, sleep)
    del src, dst
    torch_ms = median_ms(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
                         iters, lambda: (restore(), sleep()))

    client = gstab.Client(sock)
    client.attach(job, policy="stabilize")
    cg = gstab.CudaGradients(torch.cuda.current_device())
    for i, g in enumerate(grads):
        cg.add_tensor(f"t{i}", g.data_ptr(), g.numel(), gstab.dtype_of(g), "all")
    client.register_cuda(cg)
    stream = torch.cuda.current_stream()
    step = 0
    host_ms = []

    def gstab_step():
        nonlocal step
        step += 1
        t = time.perf_counter()
        client.cuda_step(cg, step, stream.cuda_stream)
        host_ms.append((time.perf_counter() - t) * 1e3)

    for _ in range(5):  # warm-up: kernels loaded, statistics past their first steps
        restore()
        gstab_step()
    torch.cuda.synchronize()
    # The sleep before `ready` lets the step's request reach gstabd and its kernels be enqueued
    # before the stream gets there: the timed interval is GPU work only.
    gstab_ms = median_ms(gstab_step, iters, lambda: (restore(), sleep()))

    # Correctness: gstab's norm of the pristine gradients against torch's.
    restore()
    want = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])).item()
    gstab_step()
    torch.cuda.synchronize()
    restore()  # the next step sees the same gradients: its norm is the one wanted too
    r = client.cuda_step(cg, step + 1, stream.cuda_stream)  # answers with a finished step
    torch.cuda.synchronize()
    # Every step so far saw the pristine gradients (restored before each): any finished one's
    # norm is the one wanted.
    got = r.groups[0].norm if r.result_step >= 1 and r.groups else float("nan")
    client.detach()
    del cg, client, params, grads, pristine
    torch.cuda.empty_cache()
    floor = 1.5 * copy_ms
    return {
        "set": name, "dtype": str(dtype).rsplit(".", 1)[-1], "tensors": len(shapes),
        "params": numel, "bytes": nbytes, "copy_ms": copy_ms, "floor_ms": floor,
        "torch_clip_ms": torch_ms, "gstab_step_ms": gstab_ms,
        "torch_x_floor": torch_ms / floor, "gstab_x_floor": gstab_ms / floor,
        "torch_over_gstab": torch_ms / gstab_ms,
        "gstab_host_call_ms_median": statistics.median(host_ms),
        "norm_rel_diff": abs(got / want - 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library", required=True)
    parser.add_argument("--out", default=".")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--gstabd_flags", nargs="*", default=[],
                        help="more gstabd flags, e.g. --gstabd_flags=--nccl_one_rank")
    parser.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float32"],
                        default=["bfloat16", "float32"])
    parser.add_argument("--gstabd_library_path", default="",
                        help="LD_LIBRARY_PATH for gstabd only (this process keeps its own)")
    args = parser.parse_args()
    gstab.load_library(args.library)
    folder = tempfile.mkdtemp(prefix="gstab-bench-")
    # The log goes straight to --out: it is there even when this process is killed.
    daemon, sock = start_gstabd(args.gstabd, folder, os.path.join(args.out, "gstabd.log"),
                                args.gstabd_library_path, args.gstabd_flags)
    rows = []
    try:
        for name in args.sets:
            for dtype in (getattr(torch, d) for d in args.dtypes):
                row = bench_set(name, SETS[name], dtype, sock, args.iters,
                                f"bench-{name}-{str(dtype)[6:]}")
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nGPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, medians of "
          f"{args.iters}\n")
    print("| set | dtype | bytes | copy ms | floor ms | torch clip ms (x floor) | "
          "gstab step ms (x floor) | torch / gstab | norm rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['dtype']} | {r['bytes'] / 1e9:.3f} GB | {r['copy_ms']:.3f} | "
              f"{r['floor_ms']:.3f} | {r['torch_clip_ms']:.3f} ({r['torch_x_floor']:.2f}x) | "
              f"{r['gstab_step_ms']:.3f} ({r['gstab_x_floor']:.2f}x) | "
              f"{r['torch_over_gstab']:.2f} | {r['norm_rel_diff']:.1e} |")
    with open(os.path.join(args.out, "gpu_step_bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    # The timings are only worth having for a step that measured the right norm: a wrong one, or
    # none (NaN: no finished step's result came back), fails the run.
    wrong = [f"{r['set']} {r['dtype']}: {r['norm_rel_diff']:.1e}" for r in rows
             if not r["norm_rel_diff"] <= 1e-3]
    if wrong:
        print("gpu_step_bench: gstab's norm is not torch's (relative difference above 1e-3, or "
              "no result): " + "; ".join(wrong), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
