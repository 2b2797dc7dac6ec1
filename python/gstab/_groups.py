"""What a framework's Stabilizer says when the job's statistics are of other groups than its
own: the case of a run resumed (an import, or gstabd's checkpoint) under other group names."""
import warnings
from typing import Collection

from ._native import Error


def warn_unmatched_groups(client, groups: Collection[str], names_from: str,
                          stacklevel: int) -> None:
    """Warns when the job holds statistics of groups that `groups` (a Stabilizer's own) lacks,
    while some of `groups` have none: those start afresh, and the saved statistics go unused.
    `names_from` says where the framework's group names come from. Only the job's first worker
    (local rank 0 of node 0) looks: other workers may register other groups. `stacklevel`
    names the user's call as warnings.warn counts, from this function (1)."""
    if getattr(client, "local_rank", 0) != 0 or getattr(client, "node_rank", 0):
        return
    try:
        stats = client.stats().get("groups", [])
    except Error:  # advice only: a Stabilizer registered already is not given up for it
        return
    fresh = sorted(g["group"] for g in stats
                   if g["group"] in groups and not g.get("accepted_steps"))
    unused = sorted(g["group"] for g in stats
                    if g["group"] not in groups and g.get("accepted_steps"))
    if fresh and unused:
        warnings.warn(
            f"gstab: the job has statistics of {len(unused)} groups this Stabilizer does not "
            f"register (first '{unused[0]}'), and {len(fresh)} of its groups have none (first "
            f"'{fresh[0]}'): they start afresh. {names_from}: make the Stabilizer as the saved "
            "run did", stacklevel=stacklevel)
