"""gstab for JAX: a pytree of gradients stabilized by gstabd.

    import gstab, gstab.jax
    from jax.experimental import multihost_utils
    client = gstab.Client("/run/gstab/gstabd.sock")
    gstab.jax.attach(client, "my-run", policy="stabilize")  # nodes: the processes' gstabds
    if client.node_rank == 0 and client.local_rank == 0:  # resuming: one process imports
        client.import_state(saved)                      # (the others take its statistics),
    multihost_utils.sync_global_devices("gstab-import") # before any of them steps
    stabilizer = gstab.jax.Stabilizer(client, params)   # the gradients' shapes and dtypes
    for step in range(1, steps + 1):
        grads = grad_fn(params, batch)                    # jitted or not
        grads, result = stabilizer.step(grads, step)
        if not result.skip:
            params, opt_state = update(params, grads, opt_state)

JAX arrays are immutable, so the gradients travel through host shared memory that gstabd maps
(the CPU backend): `step()` copies each leaf into it, gstabd stabilizes it in place, and the
results come back as new arrays with the leaves' shardings. That is one copy each way for
arrays on the CPU, two for arrays on an accelerator (through the host). Global arrays (over
several processes' devices) are read from, and made again as, this process's shards. Leaves are named by their paths in the tree
(`params['dense']['kernel']` is `dense/kernel`).

A job of several processes (jax.distributed) is a job of as many nodes as the gstabds its
processes reach (one per host, as a rule): attach() gets the rendezvous from process 0 and
shares it over JAX's own collectives.
Each process registers the arrays it holds whole; gradients averaged across processes are
`replicated=True`, each process's own slice of a model is sharded (the default). The job's
checkpoint keeps client.export_state()'s bytes.
"""

import ctypes
import operator
import re
import warnings
from typing import Any, Callable, Optional, Tuple, Union

import jax
import numpy as np

import gstab
from gstab import _nodes
from gstab._groups import warn_unmatched_groups

__all__ = ["Stabilizer", "attach", "leaf_name"]

Group = Union[str, Callable[[str, Any], str]]
_ALIGN = 64  # of every tensor in an arena
_INSTANCE_CHARS = 32  # of a gstabd's instance (Client.daemon_instance)


def attach(client: gstab.Client, job: str, policy: Optional[str] = None,
           config: Optional[gstab.Config] = None, *, local_rank: Optional[int] = None,
           local_world_size: Optional[int] = None) -> None:
    """Attaches this process to its node's gstabd as a worker of `job`: rank
    jax.process_index() of jax.process_count(). The processes whose clients talk to one gstabd
    (the same instance, Client.daemon_instance) are one node's, numbered in process order,
    whatever their hosts' or containers' names; with a gstabd of an earlier release, which
    cannot say, each process is a node of its own (one process per host: else give
    local_world_size). A local_rank given alone must be the one found
    (ValueError on every process otherwise). local_world_size given: that many consecutive
    processes a node (local_rank default: rank modulo it). With several processes, every
    process must call this at once: their gstabds are gathered, and with several nodes process
    0 asks its gstabd for the rendezvous and broadcasts it to the others, over JAX's
    collectives (on the CPU: jax_cpu_collectives_implementation "gloo")."""
    rank, world = jax.process_index(), jax.process_count()
    node_rank, node_ranks = None, None
    if local_world_size is None:
        local_world_size = 1
        if world > 1:
            found = _layout_by_gstabd(client, rank, world, local_rank)
            if found is not None:
                local_rank, local_world_size, node_rank, _, node_ranks = found
    if local_world_size < 1 or world % local_world_size:
        raise ValueError(f"{world} processes are not a multiple of local_world_size "
                         f"{local_world_size}")
    nodes = world // local_world_size
    if node_rank is None:
        # Not found from the gstabds (one process, or local_world_size given): consecutive
        # processes a node. A local_rank given otherwise is refused before anyone attaches, on
        # every process alike (the others would wait for this one in the rendezvous's
        # broadcast, or its first step).
        _refuse_wrong_local_rank(rank, world,
                                 rank % local_world_size if local_rank is None else local_rank,
                                 local_world_size)
    if local_rank is None:
        local_rank = rank % local_world_size
    if node_rank is None:
        node_rank = rank // local_world_size
    blob = None
    if nodes > 1:
        from jax.experimental import multihost_utils
        failure = None
        if rank == 0:
            try:
                blob = client.create_rendezvous(job, nodes)
            except Exception as e:  # noqa: BLE001 (the others hear of it, then it is raised)
                failure = e
        # The blob's length first (negative: process 0 failed, -1 - its status code), then its
        # bytes. int32: JAX without jax_enable_x64 would narrow an int64, with a warning.
        code = failure.code if isinstance(failure, gstab.Error) else 2  # UNKNOWN
        size = int(multihost_utils.broadcast_one_to_all(
            np.array(-1 - code if failure else len(blob or b""), dtype=np.int32)))
        if failure is not None:
            raise failure
        if size < 0:
            raise gstab.Error(-1 - size, "process 0 could not create the job's rendezvous: its "
                              "error says why")
        data = np.frombuffer(blob, dtype=np.uint8) if rank == 0 else np.zeros(size, np.uint8)
        blob = np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()
    client.attach(job, rank=rank, world_size=world, local_rank=local_rank,
                  local_world_size=local_world_size, policy=policy, config=config,
                  node_rank=node_rank, node_count=nodes, rendezvous=blob)
    client.node_ranks = node_ranks


def _local_rank_word(local_rank) -> int:
    """local_rank as gathered across the processes: itself if an int in [0, 2^31), else -1, so
    that every process refuses it alike (a value int32 cannot hold would fail on its process
    alone, and the others would wait in the gathering for good)."""
    try:
        given = operator.index(local_rank)
    except TypeError:
        return -1
    return given if 0 <= given < 2**31 else -1


def _refuse_wrong_local_rank(rank: int, world: int, local_rank: int,
                             local_world_size: int) -> None:
    """Raises ValueError, on every process, when some process's local_rank is not its place
    among local_world_size consecutive processes a node (one collective with several). One
    that is not an int in [0, 2^31) is sent as -1, so that it too is refused everywhere."""
    mine = np.array([_local_rank_word(local_rank), rank % local_world_size], np.int32)
    if world > 1:
        from jax.experimental import multihost_utils
        every = np.asarray(multihost_utils.process_allgather(mine)).reshape(world, 2)
    else:
        every = mine.reshape(1, 2)
    for process, (given, expected) in enumerate(every):
        if given < 0:
            raise ValueError(f"process {process}'s local_rank is not an int in [0, 2^31)")
        if given != expected:
            raise ValueError(f"local_rank {given} is not process {process}'s: with "
                             f"{local_world_size} consecutive processes a node it is "
                             f"{expected}")


def _layout_by_gstabd(client: gstab.Client, rank: int, world: int,
                      local_rank: Optional[int]) -> Optional[_nodes.Layout]:
    """This process's layout from the processes' gstabds, gathered with JAX's collectives: a
    node's processes are those of one gstabd instance. None (one process a node) when any
    gstabd is of an earlier release. A local_rank given must be the one found."""
    from jax.experimental import multihost_utils
    instance, _, error = _nodes.whoami(client)
    # Each process's answer as int32s: a state (0: an instance; 1: a gstabd of an earlier
    # release; 2: a failure, with its status code next), the local_rank given (-1: none; -2:
    # not an int in [0, 2^31)), and the instance's 32 characters.
    mine = np.zeros(3 + _INSTANCE_CHARS, np.int32)
    given = _local_rank_word(local_rank)
    mine[2] = -1 if local_rank is None else given if given >= 0 else -2
    if error is not None:
        mine[:2] = (2, error.code)
    elif instance is None:
        mine[0] = 1
    else:
        mine[3:] = np.frombuffer(instance.encode()[:_INSTANCE_CHARS].ljust(_INSTANCE_CHARS),
                                 np.uint8)
    answers = np.asarray(multihost_utils.process_allgather(mine)).reshape(world, -1)
    if error is not None:
        raise error
    for process, answer in enumerate(answers):
        if answer[2] == -2:
            raise ValueError(f"process {process}'s local_rank is not an int in [0, 2^31)")
    failure = _nodes.first_failure(
        [gstab.Error(int(a[1]), "its own error says why") if a[0] == 2 else None
         for a in answers], "process")
    if failure is not None:
        raise failure
    if (answers[:, 0] == 1).any():
        # One process a node, each its node's local_rank 0: refused on every process alike.
        wrong = [(p, int(a[2])) for p, a in enumerate(answers) if a[2] > 0]
        if wrong:
            raise ValueError(f"process {wrong[0][0]} gave local_rank={wrong[0][1]}, but with a "
                             f"gstabd of an earlier release each process is a node of its own "
                             f"(local_rank 0): give local_world_size to say otherwise")
        return None
    keys = [a[3:].tobytes() for a in answers]
    _nodes.check_given(keys, [(None if a[2] < 0 else int(a[2]), None) for a in answers],
                       "process")
    return _nodes.layout(keys, rank)


def _array(leaf):
    """The leaf itself if it is an array (JAX or numpy), else it as JAX makes it (a Python
    float is float32 then, as its gradient is; float64 with x64 enabled, which is refused)."""
    return leaf if hasattr(leaf, "shape") and hasattr(leaf, "dtype") else jax.numpy.asarray(leaf)


def _native(dtype) -> np.dtype:
    """`dtype` in this machine's byte order: a numpy leaf of another ('>f4') is read into, and
    returned from, the arena's native one."""
    return np.dtype(dtype).newbyteorder("=")


def _extent(index, shape) -> tuple:
    """A shard's index (a tuple of slices) as (start, stop) per dimension: equal for equal
    shards, however JAX spelled their slices."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _held_whole(leaf) -> bool:
    """Whether this process holds every element of the leaf: a numpy array, a JAX array on
    this process's devices only, or one whose shards here cover it (replicated across the
    processes). Shards of one sharding do not overlap, so the distinct ones here cover the
    array if their sizes add up to its own."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return True
    held = set()
    for index in leaf.sharding.addressable_devices_indices_map(leaf.shape).values():
        held.add(_extent(index, leaf.shape))
    return sum(int(np.prod([stop - start for start, stop in i])) for i in held) == leaf.size


def _refuse_unless_held_whole(name: str, leaf) -> None:
    if not _held_whole(leaf):
        raise ValueError(
            f"leaf '{name}' is sharded across processes ({leaf.sharding}): this process holds "
            f"only part of it. Register what each process holds whole: the gradients gathered "
            f"or made replicated (replicated=True), or this process's shards as tensors of a "
            f"gstab.Arena of their own")


def _read_into(buffer: np.ndarray, leaf) -> None:
    """The leaf's elements into `buffer` (flat, the leaf's dtype). A leaf spanning other
    processes' devices is read from the shards here, never through a collective."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        np.copyto(buffer, np.asarray(leaf).reshape(-1))
        return
    whole, done = buffer.reshape(leaf.shape), set()
    for shard in leaf.addressable_shards:
        key = _extent(shard.index, leaf.shape)
        if key not in done:  # replicated over this process's devices: read once
            done.add(key)
            whole[shard.index] = np.asarray(shard.data)


def leaf_name(path) -> str:
    """A tensor name gstabd accepts for a leaf's key path: its keys joined by '/'."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey, ...
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return re.sub(r"[^A-Za-z0-9._/:-]", "_", "/".join(parts))[:256] or "leaf"


class Stabilizer:
    """The gradients of a pytree shaped like `like` (the parameters, or one set of gradients),
    registered with gstabd through `client` (already attached).

    group: the norm group of every leaf ("" gives each leaf a group of its own), or a function
    of (leaf name, leaf) returning it.
    replicated: every rank holds the whole gradient (after a `pmean` across data-parallel
    ranks), so norms are not summed across ranks; False (the default) for sharded gradients.
    node_sharded: each node (the processes that reach one gstabd) holds the whole gradient,
    sliced across its processes (sharded within a node, replicated across nodes): norms sum
    one node's slices. Each process's slice is arrays of its own: a global array sliced across
    processes is refused, as this process holds only part of it.
    """

    def __init__(self, client: gstab.Client, like: Any, group: Group = "model",
                 replicated: bool = False, node_sharded: bool = False):
        if not isinstance(client, gstab.Client):
            raise TypeError(f"Stabilizer takes a gstab.Client first (attached), not "
                            f"{type(client).__name__}")
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(like)
        self._paths = [jax.tree_util.keystr(path) for path, _ in leaves]
        leaves = [(path, _array(leaf)) for path, leaf in leaves]
        if not leaves:
            raise ValueError("the tree has no leaves: there is nothing to stabilize")
        self._client = client
        self._arena = gstab.Arena()
        self._specs = []  # (name, shape, numpy dtype, arena index or None for empty leaves)
        names, groups = set(), set()
        for path, leaf in leaves:
            name = leaf_name(path)
            if name in names:
                raise ValueError(f"two leaves are both named '{name}' once made a tensor name")
            names.add(name)
            _refuse_unless_held_whole(name, leaf)
            dtype = _native(leaf.dtype)
            if dtype.name not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"leaf '{name}': gstab stabilizes float32, bfloat16 and float16 "
                                 f"gradients, not {dtype.name}")
            shape = tuple(leaf.shape)
            index = None
            leaf_group = group(name, leaf) if callable(group) else group
            if int(np.prod(shape)) > 0:
                index = self._arena.add_tensor(name, int(np.prod(shape)), dtype.name, leaf_group,
                                               replicated, node_sharded)
            elif (leaf_group or name) not in groups:
                # A group's first leaf, empty in this process's slice: a one-element zero
                # placeholder in its place (gstab.torch does the same), so that every process
                # names every group, in the leaves' order, as the nodes of a job must agree.
                self._arena.add_tensor(name, 1, dtype.name, leaf_group, replicated, node_sharded)
            groups.add(leaf_group or name)  # "": the tensor's own (Arena)
            self._specs.append((name, shape, dtype, index))
        if all(index is None for _, _, _, index in self._specs):
            raise ValueError("every leaf is empty: there is nothing to stabilize")
        # Copies across processes are checked once, in `like` and in the first gradients.
        self._copies_checked = replicated or node_sharded
        self._check_copies((leaf_name(path), leaf) for path, leaf in leaves)
        self._arena.allocate()
        self._buffers = [None if index is None else self._arena.array(index)
                         for _, _, _, index in self._specs]
        # The tensors lie in order in one mapping: the results leave it in one copy.
        present = [b for b in self._buffers if b is not None]
        base = present[0].ctypes.data
        span = (ctypes.c_ubyte * (present[-1].ctypes.data + present[-1].nbytes - base)) \
            .from_address(base)
        span._arena = self._arena  # the mapping lives as long as any array over it
        self._span = np.frombuffer(span, np.uint8)
        self._offsets = [None if b is None else b.ctypes.data - base for b in self._buffers]
        client.register_arena(self._arena)
        # A run resumed (import_state, or gstabd's checkpoint) under other group names.
        warn_unmatched_groups(client, groups, "Group names come from `group=` (a name, or a "
                              "function of each leaf's name and array)", stacklevel=3)

    def _check_copies(self, named_leaves) -> None:
        """Warns when a leaf registered as this process's slice (neither replicated nor
        node_sharded) is a global array held whole here that spans other processes' devices:
        every process holding it counts its copy, and norms come out sqrt(N) too large for N
        processes. (A leaf held only in part is refused, so such a leaf is replicated.)"""
        if self._copies_checked:
            return
        for name, leaf in named_leaves:
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
                warnings.warn(
                    f"leaf '{name}' is replicated across processes ({leaf.sharding}), but is "
                    f"registered as this process's slice: every process counts its copy, and "
                    f"norms come out sqrt(N) too large for N processes. Pass replicated=True "
                    f"for gradients averaged across the processes (node_sharded=True for ones "
                    f"sliced across a node's processes)", RuntimeWarning, stacklevel=3)
                self._copies_checked = True
                return

    def _tree_difference(self, grads) -> str:
        """What makes `grads`' tree another than the registered one: a leaf path one has and
        the other lacks, or else their containers."""
        leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
        paths = [jax.tree_util.keystr(path) for path, _ in leaves]
        have, registered = set(paths), set(self._paths)
        missing = [p for p in self._paths if p not in have]
        extra = [p for p in paths if p not in registered]
        if missing:
            where = f"lacks the registered leaf {missing[0]} ({len(missing)} missing in all)"
        elif extra:
            where = f"has a leaf {extra[0]} that was not registered ({len(extra)} in all)"
        else:
            where = ("has the registered leaves in other containers (a list for a tuple, a dict "
                     "for another mapping type, say)")
        return f"the gradients' tree {where}: make the Stabilizer from a tree like them"

    def step(self, grads: Any, step: int) -> Tuple[Any, gstab.StepResult]:
        """Returns the stabilized gradients (a tree like `grads`) and gstabd's results."""
        if self._client.registration is not self._arena:
            raise RuntimeError("this stabilizer's gradients are no longer registered: its client "
                               "registered others since, attached again, or detached (make a "
                               "new Stabilizer)")
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            raise TypeError("Stabilizer.step() takes concrete arrays: call it outside jax.jit, "
                            "pmap and shard_map, between a jitted gradient and a jitted update")
        leaves = [_array(leaf) for leaf in leaves]
        if treedef != self._treedef:
            raise ValueError(self._tree_difference(grads))
        for leaf, (name, shape, dtype, _), buffer in zip(leaves, self._specs, self._buffers):
            if tuple(leaf.shape) != shape or _native(leaf.dtype) != dtype:
                raise ValueError(f"leaf '{name}' is {np.dtype(leaf.dtype).name}{list(leaf.shape)}"
                                 f", registered as {dtype.name}{list(shape)}")
            _refuse_unless_held_whole(name, leaf)
            if buffer is not None:
                _read_into(buffer, leaf)
        if not self._copies_checked:
            self._check_copies(zip((name for name, _, _, _ in self._specs), leaves))
            self._copies_checked = True
        result = self._client.step(step)
        # One copy out of the shared memory, which the next step rewrites. JAX on the CPU makes
        # arrays over suitably aligned host memory without copying it: the new arrays view this
        # copy, aligned as the shared memory is (64 bytes), rather than copying again.
        fresh = np.empty(self._span.nbytes + _ALIGN, np.uint8)
        skip = -fresh.ctypes.data % _ALIGN
        fresh = fresh[skip:skip + self._span.nbytes]
        np.copyto(fresh, self._span)
        out = list(leaves)
        put, hosts, shardings = [], [], []  # one device_put for the leaves of this process
        for i, (leaf, (_, shape, dtype, _), offset) in enumerate(
                zip(leaves, self._specs, self._offsets)):
            if offset is None:
                continue
            host = fresh[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype)
            out[i] = host.reshape(shape)
            if not isinstance(leaf, jax.Array):
                continue
            if leaf.is_fully_addressable:
                put.append(i)
                hosts.append(out[i])
                shardings.append(leaf.sharding)
            else:
                # Each process makes its own shards from its own copy: device_put would check
                # that every process passed the same values, gathering them all (and refusing
                # any NaN, which equals nothing).
                out[i] = jax.make_array_from_callback(shape, leaf.sharding,
                                                      lambda index, h=out[i]: h[index])
        for i, array in zip(put, jax.device_put(hosts, shardings)):
            out[i] = array
        return jax.tree_util.tree_unflatten(treedef, out), result
