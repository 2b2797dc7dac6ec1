"""How gstab.torch reads a model's layout: what each rank holds of a parameter (a DTensor's
local shard), how its group's norm combines the ranks (sharded, replicated, node-sharded), and
the layouts it refuses (sparse gradients, FSDP1's whole copies, DTensors no one sum serves)."""

from typing import Tuple

import torch

import gstab


_DTENSOR = []  # DTensor's class (None without torch.distributed), once looked up


def _dtensor_type():
    # Looked up once: the step's checks call it several times a parameter, and an import
    # statement each time cost most of a step's time for models of thousands of tensors.
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
            _DTENSOR.append(DTensor)
        except ImportError:  # a PyTorch without torch.distributed
            _DTENSOR.append(None)
    return _DTENSOR[0]


def _sparse_refusal(name: str) -> str:
    return (f"gstab: the gradients of '{name}' are sparse (nn.Embedding(sparse=True)?): gstab "
            "stabilizes dense gradients in place; give the module dense ones (sparse=False)")


def _local(t: torch.Tensor) -> torch.Tensor:
    """What this rank holds of `t`: a DTensor's local shard, else `t` itself."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _like(p: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`local` as a gradient of `p`: a DTensor over it with p's mesh and placements if p is a
    DTensor, else `local` itself."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(p, dtensor):
        return local
    return dtensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


def _check_fsdp1(name: str, module: torch.nn.Module, replicated: bool, nodes: int) -> None:
    """FSDP1's FullyShardedDataParallel holds plain flat parameters, whose gradients gstab sums
    over every rank: right for the sharding strategies that give each rank its own shard, and
    refused for those whose ranks hold whole copies (gstab would count each copy), unless
    `replicated` says so (NO_SHARD is then DDP's layout) or the copies are one node's (a hybrid
    strategy on one node shards as FULL_SHARD does)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    except ImportError:  # a torch without FSDP
        return
    if not isinstance(module, FullyShardedDataParallel):
        return
    strategy = module.sharding_strategy
    no_shard = strategy == ShardingStrategy.NO_SHARD
    world = torch.distributed.get_world_size()
    # The ranks one copy of the gradients is sharded over (a process_group or device_mesh of
    # fewer than the job's ranks leaves each group of them a whole copy).
    group = getattr(module, "process_group", None)
    shard_ranks = group.size() if group is not None else world
    if world == 1 or (no_shard and replicated):  # one rank: FSDP1 shards nothing
        return
    if shard_ranks == world and (
            strategy in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP) or
            (not no_shard and nodes == 1)):  # a hybrid strategy's one node: FULL_SHARD's layout
        return
    copies = ("each rank holds" if no_shard else
              f"each group of the {shard_ranks} ranks it shards over (of the job's {world}) holds")
    raise ValueError(
        f"module '{name or type(module).__name__}' is FSDP1's FullyShardedDataParallel with "
        f"{strategy.name}: {copies} a whole copy of the gradients, which gstab would count "
        "once per copy. gstab serves FSDP1 with FULL_SHARD or SHARD_GRAD_OP over all the "
        "job's ranks (NO_SHARD with replicated=True), FSDP2's fully_shard (HSDP: its 2-D "
        "mesh) and DDP")


def _sharing(name: str, p: torch.Tensor, replicated: bool,
             client: gstab.Client) -> Tuple[bool, bool]:
    """How p's group's norm combines the ranks' gradients: (replicated, node_sharded). A plain
    tensor: `replicated`. A DTensor on a mesh of all the job's ranks: sharded (FSDP2's Shard),
    replicated (Replicate everywhere), or node-sharded (HSDP: a 2-D mesh replicated across the
    nodes and sharded within each, its rows the nodes). What gstab cannot sum is refused."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(p, dtensor):
        return replicated, False
    mesh = p.device_mesh
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    kinds = [type(placement).__name__ for placement in p.placements]
    if mesh.size() == world and set(kinds) <= {"Shard", "Replicate"}:
        if set(kinds) == {"Replicate"}:
            return True, False
        if mesh.ndim == 1:
            return False, False
        # The rows must be gstab's nodes (which ranks reach one gstabd), in any order: each
        # node's shards then sum to the whole tensor, once per node.
        local = client.local_world_size
        nodes = getattr(client, "node_ranks", None) or [
            [n * local + r for r in range(local)] for n in range(client.node_count)]
        if kinds == ["Replicate", "Shard"] and \
                sorted(map(sorted, mesh.mesh.tolist())) == sorted(map(sorted, nodes)):
            return False, True
    raise ValueError(
        f"parameter '{name}' is a DTensor on a {mesh.ndim}-D mesh of {mesh.size()} of the job's "
        f"{world} ranks, placed {p.placements}: gstab serves DTensors sharded (FSDP2's "
        "fully_shard) or replicated over a mesh of all ranks, and HSDP's 2-D mesh whose rows "
        "are the nodes (replicated across nodes, sharded within each). Register other layouts' "
        "local shards with gstab.Arena or gstab.CudaGradients, in groups that are whole")
