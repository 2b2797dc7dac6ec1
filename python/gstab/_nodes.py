"""Which workers of a job share a node, for gstab.torch.attach and gstab.jax.attach: those whose
clients talk to one gstabd (the same instance), whatever their hosts' or containers' names say.
Every rank decides from the same gathered answers, so all agree, or all raise the same error.
Internal to gstab."""

import socket
from typing import Hashable, List, NamedTuple, Optional, Sequence, Tuple

from ._native import Error

UNKNOWN = 2  # the gRPC status code of a failure that is not gstabd's


class Layout(NamedTuple):
    local_rank: int
    local_world_size: int
    node_rank: int
    node_count: int
    nodes: List[List[int]]  # each node's global ranks, in order; the nodes in node_rank order


def whoami(client) -> Tuple[Optional[str], str, Optional[Error]]:
    """What this worker tells the job's others: (its gstabd's instance, or None from a gstabd of
    an earlier release; its host's name; the error that kept it from asking, or None). Never
    raises: a worker that raised here would leave the others waiting in the gathering."""
    try:
        return client.daemon_instance(), socket.gethostname(), None
    except Error as e:
        return None, socket.gethostname(), e
    except Exception as e:  # noqa: BLE001 (every worker raises it, after the gathering)
        return None, "", Error(UNKNOWN, f"{type(e).__name__}: {e}")


def first_failure(errors: Sequence[Optional[Error]], what: str = "rank") -> Optional[Error]:
    """The first worker's failure to ask its gstabd, as every worker raises it (naming the
    worker), or None."""
    for rank, error in enumerate(errors):
        if error is not None:
            return Error(error.code, f"{what} {rank} could not ask its gstabd which it is, so "
                         f"no worker of the job attached: {error.message}")
    return None


def _nodes_of(keys: Sequence[Hashable]) -> List[List[int]]:
    """The ranks of each node, when the ranks with equal keys share one: a node's in global
    rank order, the nodes in the order of their first rank. ValueError when the nodes have
    different numbers of ranks."""
    by_key: dict = {}  # key -> its ranks, in order
    for r, key in enumerate(keys):
        by_key.setdefault(key, []).append(r)
    nodes = list(by_key.values())
    if len({len(n) for n in nodes}) != 1:
        raise ValueError(f"the nodes run different numbers of ranks ({_by_node(nodes)}): gstab "
                         "needs as many workers on each node; or pass local_world_size, "
                         "local_rank and node_rank")
    return nodes


def _by_node(nodes: List[List[int]]) -> str:
    return "by node: " + "; ".join(", ".join(map(str, n)) for n in nodes)


def layout(keys: Sequence[Hashable], rank: int) -> Layout:
    """`rank`'s layout when the ranks with equal keys share a node (_nodes_of)."""
    nodes = _nodes_of(keys)
    node = next(i for i, n in enumerate(nodes) if rank in n)
    return Layout(nodes[node].index(rank), len(nodes[node]), node, len(nodes), nodes)


def check_given(keys: Sequence[Hashable], given: Sequence[Tuple[Optional[int], Optional[int]]],
                what: str = "rank") -> None:
    """Refuses, on every worker alike, a local_rank or node_rank a worker gave (given: each
    worker's, None where it gave none) that is not the one its gstabd makes it: two workers of
    one gstabd with one local rank would take each other's place at every attach."""
    nodes = _nodes_of(keys)
    found = {r: (n.index(r), i) for i, n in enumerate(nodes) for r in n}
    for r, values in enumerate(given):
        for name, value, right in zip(("local_rank", "node_rank"), values, found[r]):
            if value is not None and value != right:
                raise ValueError(
                    f"{what} {r} gave {name}={value}, but the {what}s that reach its gstabd "
                    f"make it {name} {right} ({_by_node(nodes)}): leave it out, or give "
                    f"local_world_size too, for nodes of consecutive {what}s")
