"""What the Python tests' jobs register and step: one float32 tensor per group, deterministic
gradients with a spike at step 15."""
import math

import gstab


def one_tensor_job(client: gstab.Client, numel: int = 256, groups=("w",), replicated=(),
                   node_sharded=()):
    """Registers one float32 tensor per group (those in `replicated` replicated, those in
    `node_sharded` node-sharded, the others sharded); returns their memoryviews."""
    arena = gstab.Arena()
    indices = [arena.add_tensor(g, numel, "float32", g, replicated=g in replicated,
                                node_sharded=g in node_sharded) for g in groups]
    arena.allocate()
    client.register_arena(arena)
    return [arena.view(i) for i in indices]


def fill(view, step: int, salt: int = 0) -> float:
    """Deterministic gradients for a step, with a spike at step 15; returns their norm."""
    factor = 300.0 if step == 15 else 1.0
    for i in range(len(view)):
        view[i] = factor * math.sin(0.37 * i + 1.3 * step + salt)
    return math.sqrt(sum(view[i] ** 2 for i in range(len(view))))


def run_steps(client, views, steps):
    """Fills the views for each step (fill, one salt per view) and steps; returns each step's
    groups' scales."""
    scales = []
    for step in steps:
        for k, v in enumerate(views):
            fill(v, step, salt=k)
        scales.append([g.scale for g in client.step(step).groups])
    return scales


def attached_job(socket: str, job: str, steps=(), reattach_timeout: float = 60.0):
    """A client of the gstabd at `socket` attached to `job`, one tensor registered and `steps`
    stepped; the client and the tensor's views."""
    client = gstab.Client(socket, reattach_timeout=reattach_timeout)
    client.attach(job)
    views = one_tensor_job(client)
    run_steps(client, views, steps)
    return client, views
