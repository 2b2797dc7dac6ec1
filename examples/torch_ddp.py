"""A PyTorch DistributedDataParallel job whose gradients its node's gstabd stabilizes.

    torchrun --standalone --nproc_per_node=2 examples/torch_ddp.py --socket /run/gstab/gstabd.sock

Each rank trains a small regression MLP on data of its own; the loss is multiplied by 10^4 on
the --spike_steps (a stand-in for a bad batch). With gstab the spikes are flagged and their
magnitude replaced; run with --no_gstab to see the same job without it. Ranks run on the CPU
(Gloo), or one GPU each (NCCL) with --cuda; gstabd must then run its CUDA backend. Needs
python/ on PYTHONPATH (or the client bundle's python/) and libgstab.so where gstab finds it.

Across nodes, each node's torchrun points the ranks at that node's gstabd (gstabd started
with --peer_listen), and gstab.torch.attach shares the job's rendezvous:

    torchrun --nnodes=2 --node_rank=N --master_addr=HOST0 --nproc_per_node=8 \\
        examples/torch_ddp.py --cuda

--save FILE writes a checkpoint after the last step (model, optimizer and gstab's statistics)
and --resume FILE continues from one, on this gstabd or another, with the same statistics.
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
    parser.add_argument("--save", help="rank 0 writes a checkpoint here after the last step")
    parser.add_argument("--resume", help="continue from this checkpoint")
    args = parser.parse_args()

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if args.cuda else torch.device("cpu")
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo")

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1)).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    checkpoint, first = None, 1
    if args.resume:
        checkpoint = torch.load(args.resume, map_location=device, weights_only=True)
        model.module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        first = checkpoint["step"] + 1
    data = torch.Generator().manual_seed(10 + rank)  # each rank its own batch
    x = torch.randn(64, 8, generator=data)
    x, y = x.to(device), x.sum(1, keepdim=True).sin().to(device)

    stabilizer = None
    if not args.no_gstab:
        client = gstab.Client(args.socket)
        gstab.torch.attach(client, args.job, policy=args.policy)  # ranks from torch.distributed
        replicated = None if args.replicated == "auto" else args.replicated == "true"
        stabilizer = gstab.torch.Stabilizer(client, model, replicated=replicated,
                                            state=checkpoint["gstab"] if checkpoint else None)

    steps = []

    def report(step):  # rank 0's line for a step, once gstab's results for it are in
        record = steps[step - first]
        if rank == 0 and (step % 10 == 0 or step in args.spike_steps or
                          not math.isfinite(record["loss"])):
            print(f"step {step:4d}  loss {record['loss']:.5g}  grad norm {record['norm']:.4g}"
                  f"{'  scale %.3g' % record['scale'] if 'scale' in record else ''}"
                  f"{' spike' if record.get('spike') else ''}"
                  f"{' skipped' if record.get('skipped') else ''}", flush=True)

    for step in range(first, args.steps + 1):
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
            if result.result_step >= first and result.groups:
                group = result.groups[0]
                steps[result.result_step - first].update(gstab_norm=group.norm, scale=group.scale,
                                                     spike=group.spike)
            skipped = bool(stabilizer.skipped())  # this step's own decision
            steps[-1]["skipped"] = skipped
            if not skipped:
                optimizer.step()
            if result.result_step >= first:
                report(result.result_step)
        optimizer.zero_grad(set_to_none=False)

    if args.save and rank == 0:
        torch.save({"step": args.steps, "model": model.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "gstab": stabilizer.state_dict() if stabilizer else None}, args.save)
    if args.report:
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu().tolist()
        with open(os.path.join(args.report, f"rank{rank}.json"), "w") as f:
            json.dump({"steps": steps, "parameters": weights}, f)
    if stabilizer is not None:
        client.detach()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
