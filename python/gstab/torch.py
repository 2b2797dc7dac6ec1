"""gstab for PyTorch: a model's gradients stabilized by gstabd, in place.

    import gstab, gstab.torch
    client = gstab.Client("/run/gstab/gstabd.sock")
    gstab.torch.attach(client, "my-run", policy="stabilize")  # ranks from torch.distributed
    stabilizer = gstab.torch.Stabilizer(client, model)  # (..., state=checkpoint["gstab"])
    for step in range(1, steps + 1):
        loss_fn(model(x), y).backward()
        stabilizer.step(step)               # after backward (and after DDP's all-reduce)
        if not stabilizer.skipped():        # gstab says skip this optimizer step
            optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    torch.save({"model": model.state_dict(), "gstab": stabilizer.state_dict()}, path)

The stabilizer gives every trainable parameter a gradient tensor in memory gstabd reads and
writes: host shared memory for parameters on the CPU, the worker's own device memory (CUDA IPC)
for parameters on a GPU. `backward()` accumulates into it, and `step()` has gstabd rescale it in
place. On a GPU, `step()` is enqueued behind the stream's work and the stream waits for it; the
host does not, and the `StepResult` it returns describes the newest step gstabd has finished
(`result_step`), not necessarily this one. `skipped()` is this step's decision on either
device (on a GPU, a device tensor read on the stream; `bool()` of it waits for the step).

A gradient that is a new tensor at `step()` (`zero_grad()` with its default `set_to_none=True`,
DDP with `gradient_as_bucket_view=True`) is copied into the registered memory first, with one
warning; a parameter without a gradient this step counts as zero.
"""

import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch

import gstab

from ._groups import warn_unmatched_groups
from ._torch_attach import _cpu_group, attach
from ._torch_layouts import _check_fsdp1, _like, _local, _sharing, _sparse_refusal

__all__ = ["Stabilizer", "attach"]

Group = Union[str, Callable[[str, torch.nn.Parameter], str]]


def _in_group_order(specs, placeholders):
    """The tensors a rank registers, each with its parameter's index (None: a placeholder):
    every parameter's spec where it has elements here (an FSDP2 shard may have none), and a
    one-element zero placeholder (`placeholders[i]`) in place of a group's first parameter
    where that has none. Every rank thus has every group, first named in the parameters'
    order: gstabd lays a node's groups out in the order its first registration names them,
    and the nodes of a job across nodes must agree on it."""
    registered, named = [], set()
    for i, (spec, placeholder) in enumerate(zip(specs, placeholders)):
        group = placeholder[3]
        if group not in named and spec is None:
            registered.append((placeholder, None))
        named.add(group)
        if spec is not None:
            registered.append((spec, i))
    return registered


class Stabilizer:
    """One worker's parameters registered with gstabd, through `client` (already attached).

    parameters: a module, or (name, parameter) pairs as `named_parameters()` gives them. Make
    the Stabilizer after load_state_dict(assign=True), fully_shard and any change of which
    parameters train: with a module, step() raises RuntimeError if its trainable parameters are
    no longer the registered ones.
    group: the norm group of every tensor ("" gives each tensor a group of its own), or a
    function of (name, parameter) returning it.
    replicated: every rank holds the whole gradient, as after DistributedDataParallel's
    all-reduce, so norms are not summed across ranks; False when each rank holds a slice of
    the gradients (their squares are summed). Default: True for a DistributedDataParallel
    module (also under torch.compile), else False; pass it for DDP behind another wrapper, or
    for parameters given as DDP's `.module`'s (names all 'module.', as DDP's own
    named_parameters() gives them, on several ranks without it: warned of). DTensor
    parameters (FSDP2's fully_shard) need nothing: their local shards are registered, sharded
    (replicated for a Replicate placement).
    state: what state_dict() gave, from the job's checkpoint: the statistics, step count and
    configuration the job resumes with, imported before the gradients are registered (see
    load_state_dict). keep_config: the job keeps its configuration (the one attach() gave a
    new job, say), and only the statistics (re-expressed for it) and the step count are
    imported; without it, a policy or config attach() was given that the state's replaces is
    warned of.
    """

    def __init__(self, client: gstab.Client,
                 parameters: Union[torch.nn.Module, Iterable[Tuple[str, torch.Tensor]]],
                 group: Group = "model", replicated: Optional[bool] = None,
                 state: Optional[Dict[str, Any]] = None, keep_config: bool = False):
        if not isinstance(client, gstab.Client):
            raise TypeError(f"Stabilizer takes a gstab.Client first (attached), not "
                            f"{type(client).__name__}")
        _agree_on_state(client, state)
        guessed = replicated is None
        if replicated is None:  # DDP's, also under torch.compile (which wraps it)
            replicated = isinstance(getattr(parameters, "_orig_mod", parameters),
                                    torch.nn.parallel.DistributedDataParallel)
        # A module is checked at each step for parameters swapped, added or unfrozen since: its
        # gradients would no longer be the registered ones, and nothing would be stabilized.
        self._module = parameters if isinstance(parameters, torch.nn.Module) else None
        named = parameters.named_parameters() if self._module is not None else parameters
        self._params, seen = [], set()
        for item in named:  # a parameter shared under two names is registered once
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], torch.Tensor)):
                raise TypeError(
                    "parameters: a torch.nn.Module, or (name, parameter) pairs such as "
                    f"model.named_parameters(), not {type(item).__name__} items "
                    "(model.parameters() gives no names)")
            name, p = item
            if not p.requires_grad:
                continue
            if not p.is_leaf:
                raise ValueError(f"parameter '{name}' is computed from another tensor (a copy "
                                 "such as p.to(...), p.float() or p.cuda()), not a leaf: "
                                 "backward fills only leaves' .grad, so gstab would see zeros; "
                                 "pass the parameters themselves")
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(_sparse_refusal(name))
            if p.numel() > 0 and id(p) not in seen:
                seen.add(id(p))
                self._params.append((name, p))
        if not self._params:
            raise ValueError("no parameter requires a gradient: there is nothing to stabilize")
        if self._module is not None:
            for name, m in self._module.named_modules():
                if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and \
                        m.sparse and m.weight.requires_grad:
                    raise ValueError(_sparse_refusal(name or type(m).__name__))
                _check_fsdp1(name, m, replicated, client.node_count)
                if guessed and not replicated and name and client.local_world_size * \
                        client.node_count > 1 and \
                        isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    warnings.warn(
                        f"gstab: '{name}' is a DistributedDataParallel module inside the one "
                        "given, whose gradients are whole on every rank, but the parameters "
                        "are taken for each rank's shard (summed across ranks, every norm "
                        "sqrt(ranks) times too large): pass replicated=True, or the DDP module "
                        "itself", stacklevel=2)
        self._ids = frozenset(id(p) for _, p in self._params)
        # Per parameter, how its group's norm combines the ranks: (replicated, node_sharded).
        sharing = [_sharing(name, p, replicated, client) for name, p in self._params]
        if guessed and client.local_world_size * client.node_count > 1 and \
                all(name.startswith("module.") and not any(shared) and _local(p) is p
                    for (name, p), shared in zip(self._params, sharing)):  # plain tensors
            warnings.warn(
                "gstab: every parameter's name starts 'module.', as DistributedDataParallel's "
                "named_parameters() gives them, and they are taken for each rank's shard of the "
                "gradients (summed across ranks): if they are a DDP model's, whole on every "
                "rank, pass the DDP module itself or replicated=True (else every norm is "
                "sqrt(ranks) times too large); replicated=False says they are shards",
                stacklevel=2)
        devices = {p.device for _, p in self._params}
        if len(devices) != 1:
            raise ValueError(f"parameters are on {len(devices)} devices "
                             f"({', '.join(sorted(map(str, devices)))}): one worker registers "
                             "the gradients of one device")
        self.device = devices.pop()
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"gstab serves parameters on the CPU or a CUDA GPU, not on "
                             f"{self.device.type}")
        self._client = client
        self._arena = self._cuda = None
        self._placeholders = []  # CUDA: the one-element zero tensors of empty groups
        self._warned = False
        self._last = self._stream = self._step = None
        # What each rank holds of a parameter: the whole of a plain tensor, a DTensor's local
        # shard (FSDP2). Empty shards are not registered (_in_group_order).
        self._local = [_local(p) for _, p in self._params]
        # A parameter's gradients are of its grad_dtype (fp32 gradients of bf16 weights, say);
        # with none (None: any dtype), of its gradient's where it has one, else of its own.
        grad_dtypes = [getattr(p, "grad_dtype", None) or
                       (p.grad.dtype if p.grad is not None else p.dtype) for _, p in self._params]
        # specs: (name, numel, dtype, group, replicated, node_sharded) | None; placeholders:
        # the spec of each parameter's placeholder, should it need one
        specs, placeholders = [], []
        for (name, p), local, shared, grad_dtype in zip(self._params, self._local, sharing,
                                                         grad_dtypes):
            try:
                dtype = gstab.dtype_of(torch.empty(0, dtype=grad_dtype, device="meta"))
            except ValueError as e:
                raise ValueError(f"parameter '{name}': {e}") from None
            g = (group(name, p) if callable(group) else group) or name  # "": its own group
            if not isinstance(g, str):
                raise TypeError(f"parameter '{name}': its group is a {type(g).__name__}; "
                                "group= takes a str, or a function of (name, parameter) "
                                "giving one")
            _check_name(name)
            _check_name(g, group_of=name)  # before an import changes the job
            specs.append((name, local.numel(), dtype, g, *shared) if local.numel() else None)
            placeholder = f"{name}:empty" if len(name) < 250 else f"empty:{len(specs)}"
            placeholders.append((placeholder, 1, dtype, g, *shared))
        registered = _in_group_order(specs, placeholders)
        self._groups = {spec[3] for spec, _ in registered}
        if state is not None:  # before registering: gstabd takes it then on any backend
            self._import(state, check_groups=False, keep_config=keep_config)

        # Gradients take their parameter's memory layout (channels_last, say) where it is dense,
        # as AccumulateGrad and DDP's buckets expect.
        if self.device.type == "cpu":
            self._arena = gstab.Arena()
            index = {}  # a parameter's index: its tensor's in the arena
            for spec, i in registered:
                tensor = self._arena.add_tensor(*spec)
                if i is not None:
                    index[i] = tensor
            self._arena.allocate()
            self._grads = [torch.zeros_like(local, dtype=grad_dtype) if spec is None else
                           torch.frombuffer(self._arena.buffer(index[i]), dtype=grad_dtype)
                           .as_strided(local.shape,
                                       torch.empty_like(local, device="meta").stride())
                           for i, (spec, local, grad_dtype)
                           in enumerate(zip(specs, self._local, grad_dtypes))]
        else:
            try:
                import numpy  # noqa: F401  (PyTorch reads the CUDA array interface through it)
            except ImportError:
                raise ImportError("gstab.torch on a GPU needs numpy: PyTorch reads gstabd's "
                                  "results buffer through the CUDA array interface, which "
                                  "needs it") from None
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            with torch.cuda.device(self.device):  # gstab's CUDA calls set the thread's device
                self._cuda = gstab.CudaGradients(self.device.index)
                self._grads = [torch.zeros_like(local, memory_format=torch.preserve_format,
                                                dtype=grad_dtype)
                               for local, grad_dtype in zip(self._local, grad_dtypes)]
                for spec, i in registered:
                    if i is None:
                        self._placeholders.append(torch.zeros(1, dtype=_TORCH_DTYPES[spec[2]],
                                                              device=self.device))
                    memory = self._grads[i] if i is not None else self._placeholders[-1]
                    self._cuda.add_tensor(spec[0], memory.data_ptr(), *spec[1:])
        self._registration = self._arena if self._arena is not None else self._cuda
        # What p.grad is set to: the registered tensor, or a DTensor over it (made once).
        self._assigned = [_like(p, grad) for (_, p), grad in zip(self._params, self._grads)]
        # Aliases of the registered memory, never handed out: they keep it allocated whatever
        # happens to the tensors above (model.to() swaps a gradient's storage under it), so
        # gstabd never writes into memory PyTorch has given to something else.
        self._pinned = [grad.detach() for grad in self._grads]
        self._param_dtypes = [p.dtype for _, p in self._params]
        # What each step's quick check compares (_nothing_moved).
        self._placed = [(p, grad, assigned, pinned.data_ptr(), pinned.device, dtype)
                        for (_, p), grad, assigned, pinned, dtype in zip(
                            self._params, self._grads, self._assigned, self._pinned,
                            self._param_dtypes)]
        with torch.no_grad():  # a gradient with a graph (create_graph=True) gives its values only
            for (_, p), grad in zip(self._params, self._grads):
                if p.grad is not None:
                    grad.copy_(_local(p.grad))
        self._register(client)
        # A run resumed (state=, import_state, or gstabd's checkpoint) under other group names.
        self._warn_unmatched_groups()

    def _register(self, client) -> None:
        """Registers the gradients and sets each p.grad to its registered tensor. What fails
        after gstabd took the registration leaves it over memory kept allocated for good
        (gstabd writes there at any step through `client` until a registration replaces it)."""
        try:
            if self._arena is not None:
                client.register_arena(self._arena)
            else:
                with torch.cuda.device(self.device):
                    client.register_cuda(self._cuda)
                    address, size = self._cuda.results()
                    # The results buffer gstab.h describes, as int32 words: flags are word 3.
                    self._results = torch.as_tensor(_DeviceWords(address, size),
                                                    device=self.device)
            for (_, p), assigned in zip(self._params, self._assigned):
                p.grad = assigned
        except BaseException:
            if client.registration is self._registration:
                _ABANDONED.append((self._registration, self._pinned, self._placeholders))
            raise

    def state_dict(self) -> Dict[str, Any]:
        """The job's gstab statistics, step count and configuration, for the job's checkpoint
        (bytes in a dict: torch.save and torch.load(weights_only=True) take it). On a GPU it
        waits for the last step's stream first: gstabd gives the statistics of the newest step
        finished on the GPU, which must be the one the model's weights were updated with. On
        several GPUs, keep local rank 0 of node 0's (gstabd holds local rank 0's GPU's
        statistics; another rank, waiting for its own stream only, can read them a step behind
        its weights): torch.distributed.checkpoint keeps one rank's copy, not necessarily that
        one, so broadcast rank 0's first (examples/torch_data_parallel.py does), and pass it
        back as the constructor's `state` rather than handing the Stabilizer to DCP to load
        (load_state_dict after registration is refused on a job of several GPUs)."""
        if self._stream is not None:
            self._stream.synchronize()
        return {"gstab_state": self._client.export_state()}

    def load_state_dict(self, state: Dict[str, Any], keep_config: bool = False) -> None:
        """Resumes the job's statistics from state_dict()'s dict. Every rank calls it (as
        with the constructor's `state`): one worker imports (local rank 0 of node 0: the other
        nodes take node 0's statistics at the next step), then all wait for each other. A job
        on several GPUs must pass `state` to the constructor instead, as gstabd takes its
        statistics only before their gradients are registered. keep_config as the
        constructor's."""
        self._import(state, keep_config=keep_config)

    def _warn_unmatched_groups(self) -> None:
        """After an import: warns when the imported statistics are of other groups than this
        stabilizer's (_groups.warn_unmatched_groups)."""
        warn_unmatched_groups(
            self._client, self._groups,
            "Group names come from `group=`, or from parameter names, which wrappers change "
            "(DDP adds 'module.', torch.compile '_orig_mod.')", stacklevel=4)

    def _import(self, state: Dict[str, Any], check_groups: bool = True,
                keep_config: bool = False) -> None:
        if not isinstance(state, dict) or \
                not isinstance(state.get("gstab_state"), (bytes, bytearray, memoryview)):
            raise ValueError("expected the dict Stabilizer.state_dict() gave, with its "
                             "'gstab_state' bytes")
        dist = torch.distributed
        workers = getattr(self._client, "local_world_size", 1) * \
            getattr(self._client, "node_count", 1)
        # The default process group orders the import where it is the job's workers: a group
        # with other ranks (evaluators, other jobs) would wait for them, and never finish.
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0
        if workers > 1 and world != workers:
            # Only local rank 0 of node 0 imports: without a group to wait on it, the others
            # would register and step before it (its late import then refused), or step on.
            group = (f"its default torch.distributed process group has {world} ranks"
                     if world else "no torch.distributed process group")
            raise ValueError(f"gstab.torch: the job has {workers} workers and {group} to "
                             "order the import by: import with client.import_state() on local "
                             "rank 0 of node 0 before any worker registers, or make the default "
                             "process group the job's workers first")
        failure = None
        # Node 0's gstabd holds the job's statistics: the other nodes take them from it.
        if getattr(self._client, "local_rank", 0) == 0 and \
                getattr(self._client, "node_rank", 0) == 0:
            try:
                self._import_here(state["gstab_state"], keep_config)
            except Exception as e:  # noqa: BLE001 (every rank hears of it, then it is raised)
                failure = e
        if workers > 1:  # nobody registers or steps before the import; a failure reaches all
            if _ranks_with(failure is not None) and failure is None:
                raise RuntimeError("gstab: another rank failed to import the job's state")
        if failure is not None:
            raise failure
        if check_groups:
            self._warn_unmatched_groups()

    def _import_here(self, state: bytes, keep_config: bool) -> None:
        """The import, on the worker that makes it; warns when it replaces a configuration
        attach() was given (the state's wins unless keep_config)."""
        attached = getattr(self._client, "_attached", None) or {}
        asked = not keep_config and (attached.get("policy") or attached.get("config"))
        before = self._client.stats()["config"] if asked else None
        self._client.import_state(state, keep_config=keep_config)
        if before is not None and self._client.stats()["config"] != before:
            warnings.warn("gstab: the imported state's configuration replaced the one attach() "
                          "was given (Stabilizer(keep_config=True), or load_state_dict's, "
                          "keeps the job's and imports only the statistics)", stacklevel=4)

    @property
    def gradients(self):
        """The registered gradient tensors, in the order of the parameters."""
        return list(self._grads)

    def zero_grad(self) -> None:
        """Zeroes the registered gradients in place (and puts back any that were replaced)."""
        with torch.no_grad():
            torch._foreach_zero_(self._grads)
        for (_, p), assigned in zip(self._params, self._assigned):
            p.grad = assigned

    def step(self, step: int, stream: Optional["torch.cuda.Stream"] = None) -> gstab.StepResult:
        """Stabilizes this step's gradients in place; `stream` (CUDA: default the current
        one, else a stream of the parameters' device) is where the step is ordered, after the
        work queued on the current stream (the backward's). With another stream, the gradients
        are stabilized once that stream gets there: work on the current stream (the
        optimizer's) must wait for it, as skipped() makes it do, or through
        current_stream().wait_stream(stream).

        On a GPU the host does not wait for the step, and the StepResult it returns is that of
        an earlier step (its result_step: the newest the GPU had finished); whether to skip
        this step's optimizer step is skipped()'s answer, not the result's skip."""
        self._last = None  # a step that raises leaves no decision for skipped() to give
        self._check_registered()
        self._check_parameters()
        if self._arena is not None:
            self._take_back_replaced_gradients()
            self._last = self._client.step(step)
            return self._last
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            if stream is None:
                stream = current
            elif stream.device != self.device:
                raise ValueError(f"gstab.torch: step()'s stream is on {stream.device}, the "
                                 f"gradients on {self.device}: pass a stream of their device")
            elif stream != current:
                stream.wait_stream(current)  # for the backward, queued on the current stream
            with torch.cuda.stream(stream):  # the copies below come before gstabd's kernels
                self._take_back_replaced_gradients()
            self._last = self._client.cuda_step(self._cuda, step, stream.cuda_stream)
            self._stream, self._step = stream, step
            return self._last

    def skipped(self):
        """Whether the last step's gradients were not finite (skip the optimizer step): a bool
        on the CPU. On a GPU a 0-dim bool tensor on the device, read from the results gstabd
        wrote on the step's stream, which the current stream then waits for; `bool()` of it
        waits for the step."""
        self._check_registered()
        if self._last is None:
            raise RuntimeError("no step yet, or the last one raised: there is no decision")
        if self._arena is not None:
            return self._last.skip
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._stream):
                # Results of another step (the header's first word): this step's were never
                # written, as when its gstabd was lost before its kernels ran and the library
                # let the stream go on. Its gradients may be partly stabilized: skip.
                # (A header never written is zero: no groups. The step's bits as an int64.)
                step = self._step - (1 << 64) if self._step >= 1 << 63 else self._step
                written = (self._results[:2].view(torch.int64)[0] == step) & \
                    (self._results[2] != 0)
                flag = ((self._results[3] & _FLAG_SKIPPED) != 0) | ~written
            if self._stream != current:
                current.wait_stream(self._stream)
                flag.record_stream(current)
            return flag

    def _check_registered(self) -> None:
        if self._client.registration is not self._registration:
            raise RuntimeError("this stabilizer's gradients are no longer registered: its client "
                               "registered others since, attached again, or detached (make a "
                               "new Stabilizer)")

    def _check_parameters(self) -> None:
        """A module's trainable parameters must still be those registered: ones swapped since
        (load_state_dict(assign=True), fully_shard, a parameter set anew), added or unfrozen
        would have gradients gstabd never sees, and the step would stabilize nothing."""
        if self._module is None:
            return
        trained = 0  # the quick walk first: no names made
        for p in self._module.parameters():
            if p.requires_grad and p.numel() > 0:
                if id(p) not in self._ids:
                    break
                trained += 1
        else:
            if trained == len(self._ids):
                return
        current = [(n, p) for n, p in self._module.named_parameters()
                   if p.requires_grad and p.numel() > 0]
        new = [n for n, p in current if id(p) not in self._ids]
        gone = len(self._ids) - (len(current) - len(new))
        # Registered ones still the model's that stopped training (a freezing schedule).
        held = {id(p) for _, p in self._module.named_parameters()}
        frozen = [n for n, p in self._params if id(p) in held and not p.requires_grad]
        raise RuntimeError(
            f"gstab: the model's trainable parameters changed since its Stabilizer was made "
            f"({len(new)} not registered{f', first {new[0]!r}' if new else ''}; {gone} "
            f"registered no longer trained{f', first {frozen[0]!r}, frozen' if frozen else ''}):"
            " their gradients would not be stabilized. Make the Stabilizer after "
            "load_state_dict(assign=True), fully_shard and any change of which parameters "
            "train (a new one for each stage of a freezing schedule)")

    def _take_back_replaced_gradients(self) -> None:
        # Copies of values only: after backward(create_graph=True) a new gradient carries its
        # graph, which a copy under autograd would chain to the registered memory every step
        # (the graph kept alive, and zero_grad's detach_() of a view refused).
        with torch.no_grad():
            self._take_back_replaced_gradients_unrecorded()

    def _take_back_replaced_gradients_unrecorded(self) -> None:
        if not self._nothing_moved():
            self._raise_if_moved()
        self._take_back_replaced()

    def _nothing_moved(self) -> bool:
        """_raise_if_moved's question, answered quickly at each step (its walk took
        milliseconds for models of thousands of tensors): a gradient moved or cast has new
        memory, so its address says; a parameter's dtype and device are compared."""
        for p, grad, assigned, address, device, param_dtype in self._placed:
            if grad.data_ptr() != address or _local(assigned).data_ptr() != address:
                return False
            local = _local(p)
            if local.dtype is not param_dtype or local.device != device:
                return False
        return True

    def _raise_if_moved(self) -> None:
        # model.to() swaps a tensor's contents under it: the registered one's, or those of the
        # DTensor over it (FSDP2), or, with no gradient set, only the parameter's.
        for (name, p), grad, pinned, assigned, param_dtype in zip(
                self._params, self._grads, self._pinned, self._assigned, self._param_dtypes):
            for what, t in (("gradient", grad), ("gradient", _local(assigned)),
                            ("parameter", _local(p))):
                moved = t.device != pinned.device or \
                    (t.dtype != param_dtype if what == "parameter" else
                     t.dtype != pinned.dtype or t.data_ptr() != pinned.data_ptr())
                if moved:
                    raise RuntimeError(
                        f"gstab: the {what} of '{name}' was moved or cast after its Stabilizer "
                        f"was made (now {t.dtype} on {t.device}; its gradient registered as "
                        f"{pinned.dtype} on {pinned.device}): gstabd would stabilize memory the "
                        "model no longer uses; make the Stabilizer after model.to(...)")

    def _take_back_replaced(self) -> None:
        replaced = []
        for (name, p), grad, assigned in zip(self._params, self._grads, self._assigned):
            if p.grad is assigned:  # as set: over the registered memory (_nothing_moved)
                continue
            if p.grad is not None and p.grad.layout != torch.strided:
                raise ValueError(_sparse_refusal(name))
            current = None if p.grad is None else _local(p.grad)
            if current is not None and current.data_ptr() == grad.data_ptr() \
                    and current.shape == grad.shape:
                continue
            if current is None:
                grad.zero_()
            else:
                grad.copy_(current)
                if current.is_cuda:  # its memory is not reused before the copy has run
                    current.record_stream(torch.cuda.current_stream())
                if grad.numel():
                    replaced.append(name)
            p.grad = assigned
        if replaced and not self._warned:
            self._warned = True
            warnings.warn(
                f"gstab: {len(replaced)} gradients (first '{replaced[0]}') were new tensors, "
                "copied into the memory gstabd stabilizes. zero_grad(set_to_none=False) keeps "
                "gradients in place and saves the copy (DDP with gradient_as_bucket_view=True "
                "replaces them every step)", stacklevel=3)


def _ranks_with(flag: bool) -> int:
    """How many ranks of the default process group pass a true flag (every rank calls it), over
    Gloo: a group of its own where the default one has NCCL (which reduces no CPU tensor, and
    would need this rank's GPU set)."""
    count = torch.tensor([int(flag)], dtype=torch.int32)
    with _cpu_group() as group:
        torch.distributed.all_reduce(count, group=group)
    return int(count.item())


def _agree_on_state(client: gstab.Client, state) -> None:
    """A state given on some ranks only (`torch.load(...) if rank == 0 else None`) would leave
    the import's wait unmatched: the others' first collectives (DDP's) would meet it, and the
    job would hang. Refused on every rank instead, before anything that could fail on one rank
    alone. Only where the default process group is the job's workers (each makes a Stabilizer);
    a group with other ranks (evaluators, other jobs) is not waited on."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    workers = getattr(client, "local_world_size", 1) * getattr(client, "node_count", 1)
    if workers < 2 or workers != dist.get_world_size():
        return
    given = _ranks_with(state is not None)
    if given not in (0, workers):
        raise ValueError(f"gstab.torch: state= was given on {given} of {workers} ranks: every "
                         "rank passes the same state (one imports it, and all wait for that)")


_FLAG_SKIPPED = gstab.FLAG_SKIPPED
# Registrations whose Stabilizer failed after gstabd took them, with their memory: never freed.
_ABANDONED = []
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_name(name: str, group_of: Optional[str] = None) -> None:
    """gstabd's tensor and group names: [A-Za-z0-9._/:-], up to 256 characters. group_of: the
    parameter whose group `name` is."""
    if not name or len(name) > 256 or not all(c.isascii() and (c.isalnum() or c in "._/:-")
                                             for c in name):
        if group_of is not None:
            raise ValueError(f"parameter '{group_of}': group {name!r}: gstab takes names of "
                             "[A-Za-z0-9._/:-], up to 256 characters")
        raise ValueError(
            f"parameter name {name!r}: gstab takes names of [A-Za-z0-9._/:-], up to 256 "
            "characters; pass (name, parameter) pairs with names of your own, and a `group=`")


class _DeviceWords:
    """Device memory as int32 words, for torch.as_tensor (CUDA array interface, no copy)."""

    def __init__(self, address: int, size: int):
        if not address:
            raise gstab.Error(13, "the registration has no results buffer")
        self.__cuda_array_interface__ = {"shape": (size // 4,), "typestr": "<i4",
                                         "data": (address, False), "strides": None,
                                         "version": 2}
