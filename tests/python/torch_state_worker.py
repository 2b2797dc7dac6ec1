"""One rank of a torchrun job over Gloo (distributed_test.py runs two) whose checkpoint was
loaded on rank 0 only (`torch.load(...) if rank == 0 else None`): Stabilizer(state=...) must
refuse it on every rank, rather than leave rank 0 waiting in a collective the others' DDP
collectives would meet, and the job must then be usable. Writes what it saw to --report."""
import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "python"))
import gstab  # noqa: E402
import gstab.torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--socket", "--job", "--report"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    client = gstab.Client(args.socket)
    gstab.torch.attach(client, args.job)
    model = torch.nn.Linear(4, 2)
    report = {}
    state = {"gstab_state": b"rank 0's checkpoint"} if rank == 0 else None
    try:
        gstab.torch.Stabilizer(client, model, state=state)
        report["refusal"] = None
    except ValueError as e:
        report["refusal"] = str(e)
    # The refusal left nothing behind: the job registers and steps on both ranks.
    stabilizer = gstab.torch.Stabilizer(client, model)
    model(torch.ones(3, 4)).sum().backward()
    report["norm"] = stabilizer.step(1).groups[0].norm
    with open(os.path.join(args.report, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    client.close()


if __name__ == "__main__":
    main()
