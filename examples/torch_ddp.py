"""A PyTorch DistributedDataParallel job whose gradients its node's gstabd stabilizes.

    torchrun --standalone --nproc_per_node=2 examples/torch_ddp.py --socket /run/gstab/gstabd.sock

Each rank trains a small regression MLP on data of its own; the loss is multiplied by 10^4 on
the --spike_steps (a stand-in for a bad batch). With gstab the spikes are flagged and their
magnitude replaced; run with --no_gstab to see the same job without it. Ranks run on the CPU
(Gloo), or one GPU each (NCCL) with --cuda; gstabd must then run its CUDA backend. Needs
python/ on PYTHONPATH (or the client bundle's python/) and libgstab.so where gstab finds it.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import gstab  # noqa: E402
import gstab.torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default="/run/gstab/gstabd.sock", help="gstabd's socket")
    parser.add_argument("--job", default="torch-ddp-example")
    parser.add_argument("--policy", default="stabilize")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--spike_steps", type=int, nargs="*", default=[30, 45])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--cuda", action="store_true", help="one GPU per rank (NCCL)")
    parser.add_argument("--no_gstab", action="store_true", help="train without gstab")
    parser.add_argument("--replicated", choices=["auto", "true", "false"], default="auto",
                        help="how the gradients are registered (auto: DDP's are replicated)")
    parser.add_argument("--report", help="a folder for each rank's rank<N>.json of every step")
    args = parser.parse_args()

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    device = torch.device("cuda", local_rank) if args.cuda else torch.device("cpu")
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo")

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1)).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(10 + rank)  # each rank its own batch
    x = torch.randn(64, 8, generator=data)
    x, y = x.to(device), x.sum(1, keepdim=True).sin().to(device)

    stabilizer = None
    if not args.no_gstab:
        client = gstab.Client(args.socket)
        client.attach(args.job, rank=rank, world_size=world, local_rank=local_rank,
                      local_world_size=local_world, policy=args.policy)
        replicated = None if args.replicated == "auto" else args.replicated == "true"
        stabilizer = gstab.torch.Stabilizer(client, model, replicated=replicated)

    steps = []

    def report(step):  # rank 0's line for a step, once gstab's results for it are in
        record = steps[step - 1]
        if rank == 0 and (step % 10 == 0 or step in args.spike_steps or
                          not math.isfinite(record["loss"])):
            print(f"step {step:4d}  loss {record['loss']:.5g}  grad norm {record['norm']:.4g}"
                  f"{'  scale %.3g' % record['scale'] if 'scale' in record else ''}"
                  f"{' spike' if record.get('spike') else ''}"
                  f"{' skipped' if record.get('skipped') else ''}", flush=True)

    for step in range(1, args.steps + 1):
        loss = F.mse_loss(model(x), y)
        (loss * (1e4 if step in args.spike_steps else 1.0)).backward()  # DDP all-reduces
        params = list(model.parameters())
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
        steps.append({"step": step, "loss": loss.item(), "norm": norm})
        if stabilizer is None:
            optimizer.step()
            report(step)
        else:
            result = stabilizer.step(step)
            # On a GPU gstabd answers before its kernels run: the groups' results are those of
            # the newest step it had finished (result_step), often the one before.
            if result.result_step > 0 and result.groups:
                group = result.groups[0]
                steps[result.result_step - 1].update(gstab_norm=group.norm, scale=group.scale,
                                                     spike=group.spike)
            skipped = bool(stabilizer.skipped())  # this step's own decision
            steps[-1]["skipped"] = skipped
            if not skipped:
                optimizer.step()
            if result.result_step > 0:
                report(result.result_step)
        optimizer.zero_grad(set_to_none=False)

    if args.report:
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu().tolist()
        with open(os.path.join(args.report, f"rank{rank}.json"), "w") as f:
            json.dump({"steps": steps, "parameters": weights}, f)
    if stabilizer is not None:
        client.detach()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
