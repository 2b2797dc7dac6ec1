"""A JAX training loop whose gradients its node's gstabd stabilizes.

    python3 examples/jax_train.py --socket /run/gstab/gstabd.sock

A small regression MLP trained with SGD on gradients from a jitted `jax.grad`; the loss is
multiplied by 10^4 on the --spike_steps (a stand-in for a bad batch). With gstab the spikes are
flagged and their magnitude replaced; run with --no_gstab to see the same loop without it.
It imports gstab from this tree's python/ (or the client bundle's, on PYTHONPATH) and needs
libgstab.so where gstab finds it (GSTAB_LIBRARY names it: build/client_lib/libgstab.so here).

Across hosts, one process each (jax.distributed, each host's gstabd started with
--peer_listen): the batch is sharded over a mesh of every process's devices, each process
holding its own rows, and the jitted gradient is the whole batch's, replicated on every
device (global arrays): each process holds it whole, so it is registered replicated:

    python3 examples/jax_train.py --coordinator HOST0:PORT --num_processes 2 --process_id N

A gstabd holds the job (--job, jax-example) after the run: running it again from step 1 on the
same gstabd is refused (its steps must go on from the last); pass another --job, or
`gstabctl forget --job=jax-example` first.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import gstab  # noqa: E402
import gstab.jax  # noqa: E402


def init(key):
    k1, k2 = jax.random.split(key)
    return {"hidden": {"kernel": jax.random.normal(k1, (8, 32)) * 0.3, "bias": jnp.zeros(32)},
            "out": {"kernel": jax.random.normal(k2, (32, 1)) * 0.3, "bias": jnp.zeros(1)}}


def loss_fn(params, x, y, factor):
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2) * factor


def local(array) -> np.ndarray:
    """This process's copy of a replicated global array, without a collective."""
    return np.asarray(array.addressable_data(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default="/run/gstab/gstabd.sock", help="gstabd's socket")
    parser.add_argument("--job", default="jax-example")
    parser.add_argument("--policy", default="stabilize")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--spike_steps", type=int, nargs="*", default=[30, 45])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--no_gstab", action="store_true", help="train without gstab")
    parser.add_argument("--report", help="a JSON file of every step")
    parser.add_argument("--coordinator", help="jax.distributed's coordinator HOST:PORT")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--replicated", choices=["true", "false"], default="true",
                        help="register the averaged gradients replicated (or, to compare, as "
                        "if each process held a slice)")
    args = parser.parse_args()

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    # Data parallel over every process's devices: the batch's rows sharded, the rest replicated.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, whole = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    local_rows = 64 * jax.local_device_count()  # as many on each of its devices
    local_x = np.asarray(jax.random.normal(jax.random.PRNGKey(1 + jax.process_index()),
                                           (local_rows, 8)))
    x = jax.make_array_from_process_local_data(rows, local_x)  # this process's rows
    y = jax.make_array_from_process_local_data(rows, np.sin(local_x.sum(1, keepdims=True)))
    params = jax.tree_util.tree_map(  # the same initial weights in every process
        lambda a: jax.make_array_from_callback(a.shape, whole, lambda i: np.asarray(a)[i]),
        init(jax.random.PRNGKey(0)))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn), out_shardings=whole)
    update = jax.jit(lambda p, g: jax.tree_util.tree_map(lambda a, b: a - args.lr * b, p, g),
                     out_shardings=whole)

    stabilizer = None
    if not args.no_gstab:
        client = gstab.Client(args.socket)
        gstab.jax.attach(client, args.job, policy=args.policy)  # nodes: the gstabds reached
        stabilizer = gstab.jax.Stabilizer(client, params, replicated=args.replicated == "true")

    steps = []
    for step in range(1, args.steps + 1):
        factor = 1e4 if step in args.spike_steps else 1.0
        loss, grads = grad_fn(params, x, y, factor)  # the whole batch's mean gradient
        record = {"step": step, "loss": float(local(loss)) / factor,
                  "grad_norm": float(np.sqrt(sum(np.sum(local(g).astype(np.float32) ** 2)
                                                 for g in jax.tree_util.tree_leaves(grads))))}
        if stabilizer is not None:
            grads, result = stabilizer.step(grads, step)
            if result.groups:  # none for a step lost to a gstabd restart (skipped)
                group = result.groups[0]
                record.update(norm=group.norm, scale=group.scale, spike=group.spike)
            if result.skip:
                steps.append(record)
                continue
        params = update(params, grads)
        steps.append(record)
        if step % 10 == 0 or step in args.spike_steps:
            print(f"step {step:4d}  loss {record['loss']:.5g}"
                  f"{'  scale %.3g' % record['scale'] if 'scale' in record else ''}"
                  f"{' spike' if record.get('spike') else ''}", flush=True)

    final = float(local(jax.jit(loss_fn, out_shardings=whole)(params, x, y, 1.0)))
    print(f"final loss {final:.5g}")
    if args.report:
        weights = [float(v) for leaf in jax.tree_util.tree_leaves(params)
                   for v in local(leaf).ravel()]
        with open(args.report, "w") as f:
            layout = None if stabilizer is None else [  # the node gstab took it for
                client.local_rank, client.local_world_size, client.node_rank, client.node_count]
            json.dump({"steps": steps, "final_loss": final, "parameters": weights,
                       "gstab_layout": layout}, f)
    if stabilizer is not None:
        client.detach()


if __name__ == "__main__":
    main()
