"""gstab.Client: one worker's connection to its node's gstabd (the package's __init__ says
how to use it)."""

import atexit
import base64
import binascii
import contextlib
import ctypes
import json
import logging
import os
import threading
import time
import weakref
from typing import Optional

from ._native import (ABORTED, DATA_LOSS, FAILED_PRECONDITION, NOT_FOUND, UNAUTHENTICATED,
                      UNAVAILABLE, UNIMPLEMENTED, CGroupResult, CStepResult, CAttachOptions,
                      Config, Error, check, enc, enc_path, json_numbers, load_library, settings,
                      take, uint)
from ._buffers import Arena, CudaGradients, _live_arenas
from ._results import GroupResult, StepResult, _lost_step


def _check_type(call: str, value, expected: type) -> None:
    if not isinstance(value, expected):
        raise TypeError(f"{call} takes a gstab.{expected.__name__}, not {type(value).__name__}")


_log = logging.getLogger("gstab")
# What a call made while another thread attached again may hear, gstabd not having taken it:
# the old session gone (UNAVAILABLE, UNAUTHENTICATED), replaced (ABORTED), or the new one not
# registered yet (FAILED_PRECONDITION).
_IN_ANOTHER_SESSION = (UNAVAILABLE, UNAUTHENTICATED, ABORTED, FAILED_PRECONDITION)

# Clients still open when the interpreter exits detach then (gstabd lets go of their workers at
# once rather than at the end of their leases; a forked child's inherited ones free nothing). One
# that a thread is in a call with (a daemon thread's step) is left to its lease: freeing it under
# the call crashed the process.
_open_clients = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    # Destroyed, not closed: destruction detaches too, within 3 s where gstabd does not answer
    # (close()'s detach would wait the whole call timeout, holding up the interpreter's exit).
    for client in list(_open_clients):
        try:
            client._destroy()
        except Exception:  # noqa: BLE001 (nothing to report to at exit)
            pass
    for arena in list(_live_arenas):
        if getattr(arena, "_h", None):
            arena._lib.gstab_arena_unlink(arena._h)  # its memory stays mapped


def _after_fork_in_child() -> None:
    # No thread but the forking one goes on in the child: no call of another is in flight, and a
    # client's lock another thread held at the fork would stay held (the exit's destroy waited).
    for client in list(_open_clients):
        client._calls_lock, client._in_flight = threading.Lock(), 0
        client._reattach_lock, client._reattaching = threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _policy_settings(policy: Optional[str], config: Optional[Config]) -> str:
    """attach()'s policy and config as one settings text (as update_config takes it)."""
    items = []
    if policy == "stabilize-stable-spam":
        items += ["policy=stabilize", "stabilize.preset=stable-spam"]
    elif policy:
        items.append(f"policy={policy}")
    if config:
        items.append(settings(config).decode())
    return " ".join(items)



DEFAULT_SOCKET = "/run/gstab/gstabd.sock"  # gstabd's --socket default


def rendezvous_bytes(rendezvous) -> Optional[bytes]:
    """attach()'s rendezvous: bytes as create_rendezvous() gives them, or their base64 text."""
    if rendezvous is None or isinstance(rendezvous, (bytes, bytearray, memoryview)):
        return None if rendezvous is None else bytes(rendezvous)
    if isinstance(rendezvous, str):
        try:
            return base64.b64decode(rendezvous.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("rendezvous: a str must be the base64 text `gstabctl rendezvous` "
                             "prints; create_rendezvous() gives bytes") from None
    raise TypeError(f"rendezvous must be bytes (from create_rendezvous()) or their base64 text, "
                    f"not {type(rendezvous).__name__}")


class Client:
    """One worker's connection to its node's gstabd. Calls come one at a time, save that a
    monitoring thread may call stats() while another thread's call (step()) is under way; and
    close() may come from another thread while a call is in flight: the client goes once that
    call is done, and later calls are refused. At the interpreter's exit, a client a thread is
    still in a call with is left to gstabd, which lets go of it at its lease's end.

    socket_path: gstabd's unix socket (None or "": $GSTAB_SOCKET, else /run/gstab/gstabd.sock, as
    gstabctl), or HOST:PORT of its TCP port (gstabd --listen), reached
    with mutual TLS from the PEM files that GSTAB_TLS_CA, GSTAB_TLS_CERT and GSTAB_TLS_KEY name
    in the environment (GSTAB_TLS_NAME: the name in gstabd's certificate, when not the host
    dialled; docs/daemon.md, Security).

    reattach_timeout: when gstabd is replaced under a job of one node stepping host-memory
    gradients (a DaemonSet pod restarted or upgraded), step() waits up to this many seconds for
    the new gstabd, attaches and registers again (gstabd restores the job's statistics from its
    checkpoint) and retries the step, with a warning on the "gstab" logger; `reattached`
    counts it. So do stats(), export_state(), import_state() and update_config(). A step
    whose gradients gstabd had begun to scale when it went (killed, or crashed; or its stop cut
    off the answer) is not stepped again: its gradients are zeroed and its result has skip set
    (norm NaN, no group results). 0: step() raises instead (DATA_LOSS for such a step, its
    gradients zeroed all the same, as on a job across nodes). A step gstabd never answered
    (frozen, or its host unreachable) raises DATA_LOSS whatever this is, without attaching
    again to a gstabd that may not answer that either."""

    def __init__(self, socket_path: Optional[str] = None, reattach_timeout: float = 60.0):
        self._calls_lock, self._in_flight, self._closing = threading.Lock(), 0, False
        self._lib = load_library()
        self._h = ctypes.c_void_p()
        self.registration = None  # the Arena or CudaGradients last registered: what steps use
        # From attach(): this worker's rank on its node, the node's workers, this node among
        # the job's nodes, and their count.
        self.local_rank, self.local_world_size, self.node_rank, self.node_count = 0, 1, 0, 1
        # Each node's global ranks, node by node, as gstab.torch.attach found them (the ranks
        # that reach one gstabd); None: node_rank's local_world_size consecutive ranks each.
        self.node_ranks = None
        if isinstance(reattach_timeout, bool) or \
                not isinstance(reattach_timeout, (int, float)) or not reattach_timeout >= 0:
            raise ValueError(f"reattach_timeout: seconds (0 or more: 0 never attaches again), "
                             f"not {reattach_timeout!r}")
        self.reattach_timeout, self.reattached = reattach_timeout, 0
        # The thread attaching again (None: none); the lock it holds meanwhile: another thread
        # whose call found gstabd replaced waits for it, then goes on in the session it made.
        self._reattaching = None
        self._reattach_lock = threading.Lock()
        # Attaches again tried (under the lock), and the last one's error (None: it succeeded):
        # a thread that waited for another's learns its outcome rather than trying again.
        self._reattach_tries, self._reattach_error = 0, None
        self._attached = None  # attach()'s arguments, to attach again
        # None or "": the library dials $GSTAB_SOCKET, else DEFAULT_SOCKET.
        check(self._lib.gstab_connect(enc_path(socket_path or ""), ctypes.byref(self._h)))
        _open_clients.add(self)

    @contextlib.contextmanager
    def _in_call(self):
        """This client's handle, for calls into the library. ctypes lets other threads run
        during a call, so close(), the destructor and the interpreter's exit can come while one
        is in flight (a daemon thread's step, say): they leave the handle to the last call in
        flight to destroy, and calls after them are refused."""
        with self._calls_lock:
            if self._closing or not self._h:
                raise Error(FAILED_PRECONDITION, "this gstab.Client is closed")
            self._in_flight += 1
        try:
            yield self._h
        finally:
            with self._calls_lock:
                self._in_flight -= 1
                last = self._closing and self._in_flight == 0
            if last:
                self._destroy()

    def _call(self, function, *args):
        """function(this client's handle, *args), as _in_call says."""
        with self._in_call() as h:
            return function(h, *args)

    def attach(self, job: str, rank: int = 0, world_size: int = 1, local_rank: int = 0,
               local_world_size: int = 1, policy: Optional[str] = None, *,
               config: Optional[Config] = None, node_rank: int = 0, node_count: int = 1,
               rendezvous: Optional[bytes] = None) -> None:
        """Attaches this process as a worker of `job`.

        policy: "stabilize", "stabilize-stable-spam", "clip", "zclip" or "monitor"; None (the
        default): the job's own configuration when gstabd holds or restores it, stabilize for a
        new job. config: settings applied over it, such as {"clip.max_norm": 0.5}. A new job
        takes both; a later worker's must agree with the job's (stabilize names the v4 preset's
        betas: naming the other preset than the job's is refused, unless its betas were tuned
        since to neither's). Out-of-range integers (a
        negative rank, say) raise ValueError, as they would wrap in the C ABI. A job across
        nodes passes its node_rank and node_count, and the rendezvous that global rank 0 got from
        create_rendezvous() (bytes, or as a str the base64 text `gstabctl rendezvous` prints;
        None: $GSTAB_RENDEZVOUS, in base64). gstab.torch.attach fills all
        of this in from torch.distributed. Attaching again ends the earlier session, and gstabd
        lets go of its registration: register again (a new gstab.torch.Stabilizer)."""
        arguments = dict(job=job, rank=rank, world_size=world_size, local_rank=local_rank,
                         local_world_size=local_world_size, policy=policy, config=config,
                         node_rank=node_rank, node_count=node_count, rendezvous=rendezvous)
        # On failure, the earlier session (if any) goes on, unless gstabd took the attach
        # without answering in time: its next call then raises ABORTED ("was replaced").
        self._attach(**arguments)
        self.registration, self.node_ranks = None, None
        self._attached = arguments

    @property
    def restored(self) -> bool:
        """Whether the job of the last attach came back from gstabd's checkpoint (after a gstabd
        restart, or its retirement while idle); stats()["last_step"] says where it is."""
        return bool(self._call(self._lib.gstab_attach_restored))

    def _attach(self, job, rank, world_size, local_rank, local_world_size, policy, config,
                node_rank, node_count, rendezvous) -> None:
        rendezvous = rendezvous_bytes(rendezvous)
        options = CAttachOptions(
            uint("rank", rank, 32), uint("world_size", world_size, 32),
            uint("local_rank", local_rank, 32), uint("local_world_size", local_world_size, 32),
            uint("node_rank", node_rank, 32), uint("node_count", node_count, 32), rendezvous,
            len(rendezvous or b""), enc(policy, "policy"), settings(config))
        check(self._call(self._lib.gstab_attach_with_options, enc(job, "job name"),
                         ctypes.byref(options)))
        # 0 counts as 1 (as gstab.h says), for the layouts built from them too.
        self.local_rank, self.local_world_size = local_rank, max(1, local_world_size)
        self.node_rank, self.node_count = node_rank, max(1, node_count)

    def _may_attach_again(self) -> bool:
        """Whether a call that found gstabd replaced attaches and registers again by itself (see
        reattach_timeout): host-memory gradients (or none yet), one node."""
        attached, registration = self._attached, self.registration  # close() may clear them
        return self.reattach_timeout > 0 and attached is not None and \
            self._reattaching != threading.get_ident() and attached["node_count"] <= 1 and \
            (registration is None or isinstance(registration, Arena))

    def _reattached_meanwhile(self, seen: int) -> bool:
        """Whether another thread attached again since `seen` (_reattach_tries then), waiting
        for one under way: a call made meanwhile found the old session gone, or the new one
        not registered yet. Raises that attach's error when it failed."""
        if self._reattaching not in (None, threading.get_ident()):
            with self._reattach_lock:
                pass
        if self._reattach_tries == seen:
            return False
        if self._reattach_error is not None:
            raise Error(self._reattach_error.code, self._reattach_error.message)
        return True

    def _again_on_restart(self, what: str, call):
        """call(), and once more after attaching again if it found gstabd replaced."""
        seen = self._reattach_tries
        try:
            return call()
        except Error as e:
            if e.code in _IN_ANOTHER_SESSION and self._reattached_meanwhile(seen):
                return call()  # in the session another thread made
            if e.code not in (UNAVAILABLE, UNAUTHENTICATED) or not self._may_attach_again():
                raise
            self._attach_again(f"in {what}()", e.code, seen)
        return call()

    def _attach_again(self, where: str, code: int, seen: int) -> None:
        """gstabd went away under this worker (restarted: UNAVAILABLE), or no longer knows its
        session (UNAUTHENTICATED: restarted between steps, or the lease expired while this
        process was stopped): attach and register again once a gstabd serves. The job goes on
        as gstabd holds it or restored it from its checkpoint, configuration included; one that
        gstabd has no trace of starts afresh with the configuration attach() was given. Nothing
        when another thread has attached again since the failed call began (`seen`:
        _reattach_tries then), or its error when that failed."""
        why = self._lib.gstab_last_error().decode(errors="replace")  # this thread's
        with self._reattach_lock:
            if self._reattach_tries == seen:
                # Counted once over: a call another thread begins meanwhile (its `seen` this
                # count) learns of this one when it finds the lock taken.
                try:
                    self._attach_again_now(where, code, why)
                    self._reattach_error = None
                except Error as e:
                    self._reattach_error = e
                    raise
                finally:
                    # Counted before the attach is over for others (_reattaching): a call of
                    # theirs it failed sees it done (_reattached_meanwhile) and goes on in it.
                    self._reattach_tries += 1
                    self._reattaching = None
                return
        self._reattached_meanwhile(seen)  # raises another thread's failure

    def _attach_again_now(self, where: str, code: int, why: str) -> None:
        what = ("gstabd went away" if code == UNAVAILABLE
                else "gstabd went away while it may have been scaling the gradients (zeroed: "
                "the step is skipped)" if code == DATA_LOSS
                else "gstabd no longer knew this worker's session")
        deadline = time.monotonic() + self.reattach_timeout
        # As they were: a close() from another thread meanwhile clears them (and is told to the
        # loop below by the calls it refuses).
        registration, attached = self.registration, self._attached
        if attached is None:
            raise Error(FAILED_PRECONDITION, "this gstab.Client is closed")
        # Its calls below do not attach again; cleared by _attach_again once counted.
        self._reattaching = threading.get_ident()
        while True:
            if self._attached is not attached:  # detach() or close() meanwhile
                raise Error(FAILED_PRECONDITION, "this gstab.Client is closed (or was "
                            "detached) while it attached again")
            try:
                # Without a configuration: the job's own (update_config's, gstabctl's) is
                # kept.
                self._attach(**dict(attached, policy=None, config=None))
                restored = bool(self._call(self._lib.gstab_attach_restored))
                stats = self.stats()
                held = stats["steps"] > 0 or stats["last_step"] > 0
                if not restored and not held:  # started afresh: as attach() asked
                    asked = _policy_settings(attached["policy"], attached["config"])
                    if asked:
                        self.update_config(asked)
                # Last: a job registered before its configuration is set would step on the
                # default policy, should setting it fail.
                if registration is not None:
                    self.register_arena(registration)
                break
            except Error as e:
                if e.code != UNAVAILABLE or time.monotonic() >= deadline:
                    # The new session (if it was made) holds no arena: neither does this
                    # client, so that steps say to register, and Stabilizers that they are
                    # no longer registered.
                    self.registration = None
                    hint = (" (the worker's shared memory went with its session: allocate "
                            "a new Arena, or with gstab.torch and gstab.jax a new "
                            "Stabilizer)" if e.code == NOT_FOUND else "")
                    raise Error(e.code, f"{what} {where} ({why}), and attaching again "
                                f"failed: {e.message}{hint}") from None
                time.sleep(0.2)
        self.reattached += 1
        _log.warning("gstab: %s %s (%s); job '%s' attached and registered again, %s",
                     what, where, why, attached["job"],
                     "its statistics restored from gstabd's checkpoint" if restored else
                     "its statistics as gstabd holds them" if held else
                     "its statistics started afresh (gstabd had no checkpoint of it)")

    def create_rendezvous(self, job: str, node_count: int, cuda: bool = False) -> bytes:
        """Global rank 0 of a job across nodes, before anyone attaches: the blob every worker
        passes to attach(). cuda: the job registers CUDA gradients."""
        return take(lambda data, size: self._call(
            self._lib.gstab_create_rendezvous, enc(job, "job name"),
            uint("node_count", node_count, 32), int(cuda), data, size))

    def daemon_instance(self) -> Optional[str]:
        """The instance of the gstabd this client talks to (32 hex digits, random at each start
        of gstabd), needing no attach: workers of a job that get the same one are one node of
        the job, whatever their hosts' or containers' names. None from a gstabd of an earlier
        release, which cannot say."""
        out = ctypes.create_string_buffer(33)  # GSTAB_INSTANCE_SIZE
        status = self._call(self._lib.gstab_daemon_instance, out)
        if status == UNIMPLEMENTED:
            return None
        check(status)
        return out.value.decode()

    def update_config(self, config: Config) -> int:
        """Changes the job's configuration from its next step; returns its new version."""
        version = ctypes.c_uint64()
        text = settings(config) or b""
        self._again_on_restart("update_config", lambda: check(self._call(
            self._lib.gstab_update_config, text, ctypes.byref(version))))
        return version.value

    def export_state(self) -> bytes:
        """The job's statistics, step count and configuration, for the job's own checkpoint."""
        return self._again_on_restart("export_state", lambda: take(
            lambda data, size: self._call(self._lib.gstab_export_state, data, size)))

    def import_state(self, state: bytes, keep_config: bool = False) -> int:
        """Restores what export_state() gave; returns the number of groups. A CUDA job with
        several GPUs imports before its workers register. A job across nodes imports on node 0
        only: the other nodes take its statistics and configuration at the next step.
        keep_config: the job keeps its configuration; only the statistics (re-expressed for it)
        and the step count are imported."""
        groups = ctypes.c_uint32()
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be the bytes export_state() gave, not "
                            f"{type(state).__name__}")
        state = bytes(state)
        call = self._lib.gstab_import_statistics if keep_config else self._lib.gstab_import_state
        self._again_on_restart("import_state", lambda: check(
            self._call(call, state, len(state), ctypes.byref(groups))))
        return groups.value

    def stats(self) -> dict:
        """gstabd's GetStatsResponse for the job, in proto3's JSON mapping as a dict (field
        names as in stabilizer.proto; 64-bit integers are strings there, converted back)."""
        text = ctypes.c_void_p()
        self._again_on_restart("stats", lambda: check(
            self._call(self._lib.gstab_get_stats_json, ctypes.byref(text))))
        try:
            return json_numbers(json.loads(ctypes.string_at(text).decode()))
        finally:
            self._lib.gstab_free(text)

    def detach(self) -> None:
        """Ends this worker's session: gstabd lets go of it at once. The client is detached
        even when this raises (gstabd gone or stopping): the session then ends with its lease,
        and nothing attaches again by itself."""
        # The gradients stay alive until gstabd has let go of them: CUDA memory freed while
        # gstabd has it open is undefined (gstab.h).
        ended, self.registration, self._attached = self.registration, None, None
        check(self._call(self._lib.gstab_detach))
        del ended

    def register_arena(self, arena: Arena) -> None:
        """Registers the arena's tensors, replacing this client's earlier registration."""
        _check_type("register_arena", arena, Arena)

        def register():
            # A refused registration ends the earlier one too (it stays alive here until gstabd
            # has let go of it). Kept meanwhile: a Stabilizer's step on another thread while this
            # registers its arena again (attaching again) finds its arena still registered.
            try:
                check(self._call(self._lib.gstab_register_arena, arena._h))
            except Error:
                self.registration = None
                raise
        # Across a restart of gstabd too, as a step goes on (see reattach_timeout).
        self._again_on_restart("register_arena", register)
        self.registration = arena

    def register_cuda(self, gradients: CudaGradients) -> None:
        """Registers the device tensors, replacing this client's earlier registration."""
        _check_type("register_cuda", gradients, CudaGradients)
        replaced, self.registration = self.registration, None  # alive until gstabd let go
        check(self._call(self._lib.gstab_register_cuda, gradients._h))
        del replaced
        self.registration = gradients

    def step(self, step: int) -> StepResult:
        """Stabilizes the registered host-memory gradients in place (see reattach_timeout)."""
        step = uint("step", step, 64)
        seen = self._reattach_tries
        # As it is now: a close() from another thread clears self.registration, and a step cut
        # off (DATA_LOSS) still zeroes these gradients.
        registration = self.registration
        status, result = self._step_once(step)
        if result is not None:
            return result
        # gstabd did not take it (DATA_LOSS aside) in a session another thread has replaced, or
        # before its new one had registered: stepped in that one.
        if status in _IN_ANOTHER_SESSION and self._reattached_meanwhile(seen):
            seen = self._reattach_tries
            status, result = self._step_once(step)
            if result is not None:
                return result
        arena = isinstance(registration, Arena)
        again = arena and self._may_attach_again()
        if status in (UNAVAILABLE, UNAUTHENTICATED) and again:
            self._attach_again(f"at step {step}", status, seen)
            seen = self._reattach_tries  # a second loss below attaches again, as the first did
            status, result = self._step_once(step)
            if result is not None:
                return result
        if status == DATA_LOSS and arena:
            # gstabd went away after it had begun to scale them, or may have (the first step
            # after a registration): they cannot be stepped again, whether or not it comes back.
            message = self._lib.gstab_last_error().decode(errors="replace")
            unanswered = self._lib.gstab_last_step_unanswered()
            registration._zero()
            # A call gstabd never answered (frozen, or its host unreachable: it may still scale
            # the step) is not followed by an attach: that would wait a second call timeout on
            # the same gstabd. The next step finds out whether it is back.
            if again and not unanswered:
                try:
                    self._attach_again(f"at step {step}", status, seen)
                    return _lost_step(step)
                except Error as e:
                    message = e.message
            raise Error(DATA_LOSS, f"{message}; step {step}'s gradients were zeroed: skip it")
        check(status)
        return result

    def _step_once(self, step: int):
        """gstab_step's status, and its result when it succeeded (read in the same call: a
        close() from another thread does not lose a step gstabd took)."""
        r = CStepResult()
        with self._in_call() as h:
            status = self._lib.gstab_step(h, step, ctypes.byref(r))
            return status, (self._result(h, r, step) if status == 0 else None)

    def cuda_step(self, gradients: CudaGradients, step: int, stream: int = 0) -> StepResult:
        """Enqueues the step behind `stream`'s work (a cudaStream_t as an int, or a stream with a
        cuda_stream attribute such as torch.cuda.Stream; 0 or None: the legacy default stream)
        and makes the stream wait for it; the host does not wait."""
        _check_type("cuda_step", gradients, CudaGradients)
        stream = uint("stream (a cudaStream_t as an int, or a torch.cuda.Stream)",
                      getattr(stream, "cuda_stream", stream) or 0, 64)
        r = CStepResult()
        result_step = ctypes.c_uint64()
        with self._in_call() as h:
            check(self._lib.gstab_cuda_step(h, gradients._h, uint("step", step, 64),
                                            ctypes.c_void_p(stream or None), ctypes.byref(r),
                                            ctypes.byref(result_step)))
            return self._result(h, r, result_step.value)

    def _result(self, h, r: CStepResult, result_step: int) -> StepResult:
        groups = []
        for i in range(r.num_groups):
            g = CGroupResult()
            check(self._lib.gstab_step_group(h, i, ctypes.byref(g)))
            groups.append(GroupResult(g.group.decode(), g.norm, g.stabilized_norm, g.scale, g.z,
                                      bool(g.spike), bool(g.skipped), bool(g.diverging)))
        return StepResult(bool(r.skip), bool(r.diverging), r.spikes, r.norm, r.stabilized_norm,
                          result_step, groups, self._lib.gstab_step_statistics_rolled_back(h),
                          self._lib.gstab_step_not_applied(h).decode(errors="replace"))

    def close(self) -> None:
        """Detaches (when attached: gstabd lets go of this worker at once, not at the end of its
        lease) and closes the connection; the Client is not used after. `with gstab.Client(...)
        as client:` closes it at the end of the block."""
        # Destroying detaches too, waiting 3 s at most for a gstabd that does not answer
        # (detach() would wait up to 10 s). The registration lives until then (a call still in
        # flight may destroy the handle later; a second close while it is in flight keeps the
        # registration the first retired).
        if self.registration is not None:
            self._retired = self.registration
        self.registration, self._attached = None, None
        self._destroy()

    def _destroy(self) -> None:
        if not getattr(self, "_h", None):
            return
        with self._calls_lock:
            self._closing = True
            if self._in_flight:  # the last of those calls destroys it
                return
            h, self._h = self._h, None
        self._lib.gstab_client_destroy(h)
        self._retired = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Ends the session as close() does, waiting at most 2 s for a gstabd that does not
        # answer (the lease ends the session then).
        self._destroy()
