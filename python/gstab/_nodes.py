"""Which workers of a job share a node, for gstab.torch.attach and gstab.jax.attach: those whose
clients talk to one gstabd (the same instance), whatever their hosts' or containers' names say.
Internal to gstab."""

import socket
from typing import Hashable, List, Optional, Sequence, Tuple

from ._native import Error


def whoami(client) -> Tuple[Optional[str], str, Optional[Error]]:
    """What this worker tells the job's others: (its gstabd's instance, or None from a gstabd of
    an earlier release; its host's name; the error that kept it from asking, or None)."""
    try:
        return client.daemon_instance(), socket.gethostname(), None
    except Error as e:
        return None, socket.gethostname(), e


def first_failure(answers: Sequence[Tuple[Optional[str], str, Optional[Error]]],
                  what: str = "rank") -> Optional[Error]:
    """The first worker's failure to ask its gstabd, as every worker raises it (naming the
    worker), or None."""
    for rank, (_, _, error) in enumerate(answers):
        if error is not None:
            return Error(error.code, f"{what} {rank} could not ask its gstabd which it is, so "
                         f"no worker of the job attached: {error.message}")
    return None


def layout(keys: Sequence[Hashable], rank: int) -> Tuple[int, int, int, int]:
    """(local_rank, local_world_size, node_rank, node_count) of `rank` when the ranks with equal
    keys share a node: a node's local ranks in global rank order, the nodes in the order of
    their first rank. ValueError when the nodes have different numbers of ranks."""
    nodes: dict = {}  # key -> its ranks, in order
    for r, key in enumerate(keys):
        nodes.setdefault(key, []).append(r)
    ranks: List[List[int]] = list(nodes.values())
    if len({len(r) for r in ranks}) != 1:
        raise ValueError("the nodes run different numbers of ranks (by node: " +
                         "; ".join(", ".join(map(str, r)) for r in ranks) +
                         "): gstab needs as many workers on each node; or pass "
                         "local_world_size, local_rank and node_rank")
    mine = nodes[keys[rank]]
    return mine.index(rank), len(mine), ranks.index(mine), len(ranks)
