"""What gstab.torch's own Python work costs a step for models of many small tensors, beside the
client's step of the same registration in the same run.

    torch_overhead_bench.py --gstabd PATH [--library PATH] [--iters 50]

Models of N/2 Linear(8, 8) layers (N parameter tensors, tiny: gstabd's own work is small),
gstabd on its CPU backend with the monitor policy. Rows, medians of --iters steps:
  client step       gstab.Client.step on the Stabilizer's registration (the gRPC round trip and
                    gstabd's step: the floor)
  Stabilizer.step   gstab.torch's step: its checks that the parameters and gradients are still
                    the registered ones, then the same client step
"""
import argparse
import os
import statistics
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "python"))
sys.path.insert(0, os.path.join(here, "..", "tests", "python"))
import torch  # noqa: E402

import gstab  # noqa: E402
import gstab.torch  # noqa: E402
from gstabd import Gstabd  # noqa: E402


def median_ms(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gstabd", required=True)
    parser.add_argument("--library")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if args.library:
        os.environ["GSTAB_LIBRARY"] = args.library
    node = Gstabd(args.gstabd)
    try:
        print(f"{'tensors':>8} {'client step ms':>15} {'Stabilizer.step ms':>19} {'ratio':>6}")
        for n in (100, 1000, 2000, 4000):
            model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(n // 2)])
            with gstab.Client(node.socket) as client:
                client.attach(f"overhead-{n}", policy="monitor")
                stabilizer = gstab.torch.Stabilizer(client, model)
                model(torch.randn(4, 8)).sum().backward()
                step = [0]

                def advance(fn):
                    step[0] += 1
                    fn(step[0])
                floor = median_ms(lambda: advance(client.step), args.iters)
                whole = median_ms(lambda: advance(stabilizer.step), args.iters)
                print(f"{n:>8} {floor:>15.2f} {whole:>19.2f} {whole / floor:>6.2f}")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
