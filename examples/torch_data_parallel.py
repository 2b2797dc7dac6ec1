"""A data-parallel PyTorch job (DDP, FSDP2 or HSDP) whose gradients gstabd stabilizes.

    torchrun --standalone --nproc_per_node=2 examples/torch_data_parallel.py \\
        --socket /run/gstab/gstabd.sock

Each rank trains a small regression MLP on data of its own; the loss is multiplied by 10^4 on
the --spike_steps (a stand-in for a bad batch). With gstab the spikes are flagged and their
magnitude replaced; run with --no_gstab to see the same job without it. Under DDP every rank
holds the whole all-reduced gradient (registered replicated); under FSDP2 (fully_shard) each
holds a shard, and gstab's norm sums every rank's shards: the whole gradient's norm. Under HSDP
(--hsdp: fully_shard on a 2-D mesh, sharded within each node and replicated across nodes) each
node holds the whole gradient, and the norm sums one node's shards. Ranks run on the CPU
(Gloo), or one GPU each (NCCL) with --cuda; gstabd must then run its CUDA backend. It imports
gstab from this tree's python/ (or the client bundle's, on PYTHONPATH) and needs libgstab.so
where gstab finds it (GSTAB_LIBRARY names it: build/client_lib/libgstab.so here).

Across nodes, each node's torchrun points the ranks at that node's gstabd (gstabd started
with --peer_listen), and gstab.torch.attach shares the job's rendezvous:

    torchrun --nnodes=2 --node_rank=N --master_addr=HOST0 --nproc_per_node=8 \\
        examples/torch_data_parallel.py --cuda

--save DIR writes a checkpoint after the last step (torch.distributed.checkpoint: the model,
the optimizer and gstab's statistics) and --resume DIR continues from one, on this gstabd or
another, with the same statistics, to --steps (beyond the checkpoint's).

A gstabd holds the job (--job, torch-ddp-example) after the run: running it again from step 1
on the same gstabd is refused (its steps must go on from the last); pass another --job, or
`gstabctl forget --job=torch-ddp-example` first.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import gstab  # noqa: E402
import gstab.torch  # noqa: E402


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from every rank's shard if it is a DTensor (FSDP2)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


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
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard), not DDP")
    parser.add_argument("--hsdp", action="store_true",
                        help="HSDP: FSDP2 sharded within each node, replicated across nodes")
    parser.add_argument("--group", default="model",
                        help="the gradients' norm group (\"\": one per tensor)")
    parser.add_argument("--replicated", choices=["auto", "true", "false"], default="auto",
                        help="how the gradients are registered (auto: DDP's are replicated, "
                        "FSDP2's shards are not)")
    parser.add_argument("--report", help="a folder for each rank's rank<N>.json of every step")
    parser.add_argument("--save", help="a folder for a checkpoint after the last step")
    parser.add_argument("--resume", help="continue from the checkpoint in this folder")
    args = parser.parse_args()

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if args.cuda else torch.device("cpu")
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo")

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1)).to(device)
    if args.fsdp or args.hsdp:
        mesh = None
        if args.hsdp:  # rows: the nodes
            local_world = int(os.environ["LOCAL_WORLD_SIZE"])
            mesh = init_device_mesh(device.type, (dist.get_world_size() // local_world,
                                                  local_world),
                                    mesh_dim_names=("replicate", "shard"))
        fully_shard(model, mesh=mesh)  # parameters and gradients become sharded DTensors
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    gstab_state, first = None, 1
    if args.resume:  # every rank reads its part (FSDP2: its shards)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        checkpoint = {"model": model_state, "optimizer": optimizer_state, "step": 0,
                      "gstab": {"gstab_state": b""}}
        dcp.load(checkpoint, checkpoint_id=args.resume)
        set_state_dict(model, optimizer, model_state_dict=checkpoint["model"],
                       optim_state_dict=checkpoint["optimizer"])
        first = checkpoint["step"] + 1
        gstab_state = checkpoint["gstab"] if checkpoint["gstab"]["gstab_state"] else None
        if first > args.steps:
            sys.exit(f"the checkpoint in {args.resume} is at step {first - 1}: pass --steps "
                     f"beyond it (now {args.steps}) to train on")
    data = torch.Generator().manual_seed(10 + rank)  # each rank its own batch
    x = torch.randn(64, 8, generator=data)
    x, y = x.to(device), x.sum(1, keepdim=True).sin().to(device)

    stabilizer = None
    if not args.no_gstab:
        client = gstab.Client(args.socket)
        gstab.torch.attach(client, args.job, policy=args.policy)  # ranks from torch.distributed
        replicated = None if args.replicated == "auto" else args.replicated == "true"
        stabilizer = gstab.torch.Stabilizer(client, model, group=args.group,
                                            replicated=replicated,
                                            state=gstab_state)

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
        (loss * (1e4 if step in args.spike_steps else 1.0)).backward()  # all-reduced, or
        # reduce-scattered into shards (FSDP2)
        grads = {name: whole(p.grad) for name, p in model.named_parameters()}
        norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()])).item()
        steps.append({"step": step, "loss": loss.item(), "norm": norm,
                      "tensor_norms": {n: torch.linalg.vector_norm(g).item()
                                       for n, g in grads.items()}})
        if stabilizer is None:
            optimizer.step()
            report(step)
        else:
            result = stabilizer.step(step)
            # On a GPU gstabd answers before its kernels run: the groups' results are those of
            # the newest step it had finished (result_step), often the one before.
            if result.result_step >= first and result.groups:
                steps[result.result_step - first].update(
                    gstab_norm=result.norm, scale=result.groups[0].scale,
                    spike=any(g.spike for g in result.groups),
                    groups={g.group: [g.norm, g.scale] for g in result.groups})
            skipped = bool(stabilizer.skipped())  # this step's own decision
            steps[-1]["skipped"] = skipped
            if not skipped:
                optimizer.step()
            if result.result_step >= first:
                report(result.result_step)
        optimizer.zero_grad(set_to_none=False)

    if args.save:  # every rank writes its part
        model_state, optimizer_state = get_state_dict(model, optimizer)
        gstab_state = [stabilizer.state_dict() if stabilizer else {"gstab_state": b""}]
        # Rank 0's on every rank: dcp.save keeps one rank's copy of a value all ranks give, not
        # necessarily rank 0's, and on several GPUs another rank's can be a step behind.
        dist.broadcast_object_list(gstab_state, src=0)
        dcp.save({"model": model_state, "optimizer": optimizer_state, "step": args.steps,
                  "gstab": gstab_state[0]},
                 checkpoint_id=args.save)
    if args.report:
        weights = torch.cat([whole(p.detach()).flatten()
                             for p in model.parameters()]).cpu().tolist()
        layout = None if stabilizer is None else [  # the node gstab took this rank for
            client.local_rank, client.local_world_size, client.node_rank, client.node_count]
        with open(os.path.join(args.report, f"rank{rank}.json"), "w") as f:
            json.dump({"steps": steps, "parameters": weights, "gstab_layout": layout}, f)
    if stabilizer is not None:
        client.detach()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
