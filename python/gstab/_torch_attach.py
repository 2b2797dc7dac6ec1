"""gstab.torch.attach: a worker's ranks, from torch.distributed and its launcher, and the job's
rendezvous across nodes, broadcast from global rank 0."""

import contextlib
import os
from typing import Optional

import torch

import gstab
from . import _nodes


def _launched_processes() -> int:
    """How many processes the launcher says it started (WORLD_SIZE; 1 without it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def attach(client: gstab.Client, job: str, policy: Optional[str] = None,
           config: Optional[gstab.Config] = None, *, local_rank: Optional[int] = None,
           local_world_size: Optional[int] = None, node_rank: Optional[int] = None,
           cuda: Optional[bool] = None) -> None:
    """Attaches this process to its node's gstabd as a worker of `job`, with its rank and world
    size taken from torch.distributed. The ranks whose clients talk to one gstabd (the same
    instance, Client.daemon_instance) are one node's, whatever the launcher or the hosts' and
    pods' names say: one pod per GPU on a host is one node of several ranks. With a gstabd of
    an earlier release, which cannot say: torchrun's LOCAL_RANK, LOCAL_WORLD_SIZE and
    GROUP_RANK, else the ranks sharing a host's name. A local_rank or node_rank given alone
    must be the one found (ValueError on every rank otherwise). local_world_size (and
    local_rank, node_rank) given: those, with consecutive global ranks on a node, and nothing
    gathered. The nodes found are kept in client.node_ranks. Without torch.distributed
    initialized: a job of this process alone, or of the local_rank and local_world_size given
    (processes of one node); without both where WORLD_SIZE says a launcher started several
    processes, ValueError (each would attach as the same worker). With several ranks, every
    rank must call this at once: the ranks' gstabds are gathered over the default process
    group, and a job across nodes gets its rendezvous from global rank 0, broadcast over it. cuda: whether the job registers CUDA
    gradients (default: the process group has an NCCL backend; pass cuda=True for a GPU job
    over another backend). policy and config as for gstab.Client.attach."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        if node_rank:
            raise ValueError("node_rank: a job across nodes needs torch.distributed initialized "
                             "(its rendezvous is broadcast over the default process group)")
        launched = _launched_processes()
        if launched > 1 and (local_rank is None or local_world_size is None):
            raise ValueError(
                f"WORLD_SIZE is {launched} (a launcher such as torchrun started several "
                "processes), but torch.distributed is not initialized: call gstab.torch.attach "
                "after torch.distributed.init_process_group (else every process would attach as "
                "the same worker, each replacing the last), or pass local_rank and "
                "local_world_size for processes of one node")
        local_rank, local_world = local_rank or 0, local_world_size or 1
        client.attach(job, rank=local_rank, world_size=local_world, local_rank=local_rank,
                      local_world_size=local_world, policy=policy, config=config)
        return
    dist = torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    node_ranks = None
    if local_world_size is None and world > 1:
        found = _layout_by_gstabd(client, rank, world, local_rank, node_rank)
        if found is not None:
            local_rank, local_world_size, node_rank, _, node_ranks = found
    # A process group of one (each process its own, under a launcher that exports
    # LOCAL_WORLD_SIZE for all of them) is a node of one, as without torch.distributed.
    local_world = (local_world_size if local_world_size is not None
                   else 1 if world == 1 else int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if local_world < 1 or world % local_world:
        raise ValueError(f"world size {world} is not a multiple of local_world_size "
                         f"{local_world}: pass local_world_size (and local_rank, node_rank) "
                         "for this launcher")
    # Consecutive global ranks share a node: with local_world_size given, always (torchrun's
    # variables may count other nodes: one pod a GPU, each its own torchrun node); else
    # torchrun's, where it set them (a gstabd of an earlier release).
    launcher = os.environ if local_world_size is None and world > 1 else {}
    if local_rank is None:
        local_rank = int(launcher.get("LOCAL_RANK", rank % local_world))
    nodes = world // local_world
    if node_rank is None:
        node_rank = int(launcher.get("GROUP_RANK", rank // local_world))
    blob = None
    if nodes > 1:
        guessed = cuda is None
        if guessed:
            cuda = _nccl()
        message = [None]
        if rank == 0:  # the others must hear of a failure too, or they wait for good
            try:
                message = [client.create_rendezvous(job, nodes, cuda)]
            except gstab.Error as e:
                if guessed and cuda and "CUDA backend" in e.message:  # NCCL's guess
                    e = gstab.Error(e.code, f"{e.message} (gstab.torch.attach took the job "
                                    "for a GPU job, as the process group has NCCL: pass "
                                    "cuda=False for gradients on the CPU)")
                message = [e]
            except Exception as e:  # noqa: BLE001 (passed on to every rank, then raised)
                message = [RuntimeError(f"gstab: rank 0 could not create the rendezvous: {e!r}")]
        with _cpu_group() as group:
            dist.broadcast_object_list(message, src=0, group=group)
        if isinstance(message[0], Exception):
            raise message[0]
        blob = message[0]
    client.attach(job, rank=rank, world_size=world, local_rank=local_rank,
                  local_world_size=local_world, policy=policy, config=config,
                  node_rank=node_rank, node_count=nodes, rendezvous=blob)
    client.node_ranks = node_ranks


@contextlib.contextmanager
def _cpu_group():
    """The group of every rank to pass Python objects over before the worker's GPU is set: a
    Gloo group of all ranks while the default group has NCCL (whose collectives run on the
    current GPU, cuda:0 on every rank until set_device: a duplicate-GPU error), else None, the
    default group. Every rank enters it (making a group is collective)."""
    dist = torch.distributed
    group = dist.new_group(backend="gloo") if _nccl() else None
    try:
        yield group
    finally:
        if group is not None:
            dist.destroy_process_group(group)


def _layout_by_gstabd(client: gstab.Client, rank: int, world: int, local_rank: Optional[int],
                      node_rank: Optional[int]) -> Optional[_nodes.Layout]:
    """This rank's layout from the ranks' gstabds, gathered over the default process group: a
    node's ranks are those of one gstabd instance. With a gstabd of an earlier release among
    them: None under torchrun (its variables decide), else by the hosts' names. A local_rank
    or node_rank given must be the one found (ValueError on every rank otherwise)."""
    answers = [None] * world
    with _cpu_group() as group:
        torch.distributed.all_gather_object(
            answers, (*_nodes.whoami(client), (local_rank, node_rank)), group=group)
    failure = _nodes.first_failure([error for _, _, error, _ in answers])
    if failure is not None:
        raise failure
    if all(instance is not None for instance, _, _, _ in answers):
        keys = [instance for instance, _, _, _ in answers]
    elif "LOCAL_WORLD_SIZE" in os.environ:
        return None
    else:
        keys = [host for _, host, _, _ in answers]
    _nodes.check_given(keys, [given for _, _, _, given in answers])
    return _nodes.layout(keys, rank)


def _nccl() -> bool:
    """Whether the default process group reduces CUDA tensors with NCCL ("nccl", or a
    per-device backend string such as "cpu:gloo,cuda:nccl")."""
    return "nccl" in str(torch.distributed.get_backend())
