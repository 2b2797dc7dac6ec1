"""One process of a jax.distributed job whose gradients are global arrays over a mesh of every
process's devices (distributed_test.py runs two): gstab.jax must read and remake them from
this process's shards, without a collective, NaN included, and refuse one it holds only part
of. Writes what it saw to --report as JSON."""
import argparse
import json
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "python"))
import gstab  # noqa: E402
import gstab.jax  # noqa: E402


def global_array(values, sharding):
    """A global array of `values` (the same in every process) laid out by `sharding`."""
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--socket", "--job", "--coordinator", "--report"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    args = parser.parse_args()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, num_processes=2, process_id=args.process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    values = {"w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
              "b": np.arange(3, dtype=np.float32)}

    client = gstab.Client(args.socket)
    # Process 1 gives a local_rank that is not its own: every process is refused, before anyone
    # waits for it.
    try:
        gstab.jax.attach(client, args.job + "-wrong", local_world_size=1,
                         local_rank=1 if args.process_id == 1 else None)
        report_wrong = None
    except ValueError as e:
        report_wrong = str(e)
    gstab.jax.attach(client, args.job, policy="monitor")  # gradients come back unchanged
    grads = {k: global_array(v, replicated) for k, v in values.items()}
    report = {"fully_addressable": grads["w"].is_fully_addressable,
              "wrong_local_rank": report_wrong}
    stabilizer = gstab.jax.Stabilizer(client, grads, group="", replicated=True)
    for step, nan in ((1, False), (2, True), (3, False)):
        sent = {k: v.copy() for k, v in values.items()}
        if nan:
            sent["w"][1, 2] = np.nan
        out, result = stabilizer.step({k: global_array(v, replicated) for k, v in sent.items()},
                                      step)
        report[f"step{step}"] = {
            "same_sharding": all(out[k].sharding == replicated for k in sent),
            # This process's shard of each (all of it: replicated): NaN where it was sent.
            "equal": all(np.array_equal(np.asarray(out[k].addressable_data(0)), sent[k],
                                        equal_nan=True) for k in sent),
            "norms": {g.group: g.norm for g in result.groups},
        }

    sharded = global_array(np.arange(8, dtype=np.float32), NamedSharding(mesh, PartitionSpec(
        "data")))
    try:
        gstab.jax.Stabilizer(client, {"s": sharded})
        report["sharded_refusal"] = None
    except ValueError as e:
        report["sharded_refusal"] = str(e)
    client.detach()
    with open(args.report, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
