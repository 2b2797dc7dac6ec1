"""A worker process's own life with the Python package against a real gstabd: its exit with
clients and arenas left open, threads in a call while it ends, and forked children.

    lifecycle_test.py --gstabd PATH --library PATH
"""
import ctypes
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import gstab  # noqa: E402
from gstabd import Gstabd, command_line  # noqa: E402
from stepping import attached_job, one_tensor_job, run_steps  # noqa: E402

ARGS = None


def child_env():
    """The environment of another interpreter that uses this package and library."""
    return dict(os.environ, GSTAB_LIBRARY=gstab.load_library()._name,
                PYTHONPATH=os.path.dirname(os.path.dirname(gstab.__file__)))


def run_python(script):
    """`script` run by another interpreter with this package and library, to its end."""
    return subprocess.run([sys.executable, "-c", script], env=child_env(), timeout=60,
                          capture_output=True, text=True)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


class LifecycleTest(unittest.TestCase):
    """Each test runs a gstabd of its own."""

    def test_a_worker_that_exits_without_closing_is_let_go_of_at_once(self):
        # The interpreter's exit detaches the clients left open: gstabd lets go of the worker
        # then, not a lease later.
        node = Gstabd(ARGS.gstabd, "--lease_ms=30000")
        try:
            script = ("import gstab\n"
                      f"c = gstab.Client({node.socket!r})\n"
                      "c.attach('py-exit', local_rank=0, local_world_size=2)\n")
            run = run_python(script)
            self.assertEqual(run.returncode, 0, run.stderr)
            other = gstab.Client(node.socket)
            other.attach("py-exit", local_rank=1, local_world_size=2)
            self.assertEqual(other.stats()["attached_workers"], 1)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_step_waiting_for_a_killed_local_worker_fails_at_its_lease_not_the_timeout(self):
        # Rank 1 is killed after registering, without detaching: once its lease runs out, rank
        # 0's step waiting for it is told so, not a minute later at the step timeout.
        node = Gstabd(ARGS.gstabd, "--lease_ms=1500", "--step_timeout_ms=60000")
        try:
            killed = subprocess.Popen([sys.executable, "-c", f"""
import os, signal, gstab
c = gstab.Client({node.socket!r})
c.attach("py-killed", local_rank=1, local_world_size=2)
a = gstab.Arena()
a.add_tensor("w", 256)
a.allocate()
c.register_arena(a)
print("registered", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""], env=child_env(), stdout=subprocess.PIPE, text=True)
            client = gstab.Client(node.socket)
            client.attach("py-killed", local_rank=0, local_world_size=2)
            one_tensor_job(client)
            self.assertEqual(killed.stdout.readline().strip(), "registered")
            killed.wait(timeout=30)
            began = time.monotonic()
            with self.assertRaises(gstab.Error) as e:
                client.step(1)
            waited = time.monotonic() - began
            self.assertEqual(e.exception.code, 9, e.exception.message)  # FAILED_PRECONDITION
            self.assertIn("waits for local ranks [1], whose workers stopped without detaching",
                          e.exception.message)
            self.assertLess(waited, 30, "the step waited for the killed worker's step timeout")
            client.close()
        finally:
            self.assertEqual(node.stop(), 0)

    def test_an_exit_while_a_thread_is_in_a_step_neither_crashes_nor_disturbs_gstabd(self):
        # A daemon thread stepping when the main thread returns: the exit leaves the client it
        # is in a call with (gstabd lets it go at its lease's end) rather than freeing it under
        # the call. Before, the process crashed (SIGSEGV) in most such exits.
        node = Gstabd(ARGS.gstabd)
        try:
            other = gstab.Client(node.socket)
            other.attach("py-exit-other")
            views = one_tensor_job(other)
            for delay in (0.1, 0.2, 0.3, 0.4, 0.5):
                run = run_python(f"""
import threading, time, gstab
c = gstab.Client({node.socket!r})
c.attach("py-exit-stepping-{delay}")
a = gstab.Arena()
a.add_tensor("w", 1 << 22)
a.allocate()
c.register_arena(a)
def step_on():
    step = 1
    while True:
        c.step(step)
        step += 1
threading.Thread(target=step_on, daemon=True).start()
time.sleep({delay})
""")
                self.assertEqual(run.returncode, 0, f"exit after {delay} s: {run.stderr}")
                self.assertNotIn("Exception in thread", run.stderr)  # it stepped to the end
            run_steps(other, views, [1, 2])  # another job's session is untouched
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_close_from_another_thread_waits_for_the_call_in_flight(self):
        # close() while a thread is in a step: the step ends as it would have, the client is
        # destroyed (and detached) after it, and the thread's next call is refused as closed.
        # Its job's other worker, stepping in lockstep, is told at once that it detached.
        node = Gstabd(ARGS.gstabd, "--step_timeout_ms=60000")
        try:
            clients, arenas = [gstab.Client(node.socket) for _ in range(2)], []
            for rank, client in enumerate(clients):
                client.attach("py-close-thread", local_rank=rank, local_world_size=2)
                arenas.append(gstab.Arena())
                arenas[-1].add_tensor("w", 1 << 20)
                arenas[-1].allocate()
                client.register_arena(arenas[-1])
            outcome = {}

            def step_on(rank):
                step = 1
                try:
                    while True:
                        clients[rank].step(step)
                        step += 1
                except gstab.Error as e:
                    outcome[rank] = (step, e.code, e.message, time.monotonic())

            steppers = [threading.Thread(target=step_on, args=(r,)) for r in range(2)]
            for stepper in steppers:
                stepper.start()
            time.sleep(0.3)
            closed = time.monotonic()
            clients[0].close()
            for stepper in steppers:
                stepper.join(30)
            self.assertFalse(any(stepper.is_alive() for stepper in steppers))
            self.assertIsNone(clients[0]._h)  # destroyed once its call was done
            step, code, message, _ = outcome[0]
            self.assertGreater(step, 1)
            self.assertEqual((code, message), (9, "this gstab.Client is closed"))
            # Detached: the other worker's step is refused at once, not after the step timeout.
            _, code, message, when = outcome[1]
            self.assertEqual(code, 9, message)
            self.assertIn("detached", message)
            self.assertLess(when - closed, 20)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_close_while_another_thread_attaches_again_ends_that_thread_as_closed(self):
        # A step waiting for gstabd to come back (attaching again) when another thread closes
        # the client: it is told the client is closed, not a TypeError from what close() let go.
        node = Gstabd(ARGS.gstabd)
        try:
            client, views = attached_job(node.socket, "py-close-reattach", [1],
                                         reattach_timeout=20)
            node.process.kill()
            node.process.wait()
            outcome = []

            def step_again():
                try:
                    client.step(2)
                except Exception as e:  # noqa: BLE001 (what it was is the test)
                    outcome.append(e)

            stepper = threading.Thread(target=step_again)
            stepper.start()
            time.sleep(0.5)  # in the loop waiting for a gstabd to attach to
            client.close()
            stepper.join(20)
            self.assertFalse(stepper.is_alive())
            self.assertIsInstance(outcome[0], gstab.Error)
            self.assertEqual(outcome[0].code, 9)
            self.assertIn("this gstab.Client is closed", outcome[0].message)
            os.unlink(node.socket)
            node._start()
        finally:
            self.assertEqual(node.stop(), 0)

    def test_an_arena_alive_at_exit_leaves_no_shared_memory_behind(self):
        # A framework's tensors over an arena (torch.frombuffer) keep it alive past the
        # interpreter's end, so its destructor never runs: the exit removes its object anyway.
        node = Gstabd(ARGS.gstabd)
        try:
            script = ("import ctypes, os, gstab\n"
                      f"c = gstab.Client({node.socket!r})\n"
                      "c.attach('py-exit-arena')\n"
                      "a = gstab.Arena()\n"
                      "a.add_tensor('w', 64)\n"
                      "a.allocate()\n"
                      "c.register_arena(a)\n"
                      "ctypes.pythonapi.Py_IncRef(ctypes.py_object(a))  # never freed\n"
                      "print(os.getpid(), flush=True)\n")
            run = run_python(script)
            self.assertEqual(run.returncode, 0, run.stderr)
            pid = run.stdout.split()[0]
            left = [f for f in os.listdir("/dev/shm")
                    if f.startswith("gstab-") and f.split("-")[2:3] == [pid]]
            self.assertEqual(left, [])
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_forked_child_leaves_its_parents_client_and_arena_alone(self):
        # A child forked by the training process (a data loader's, say) inherits the client and
        # arena; using them there is refused, and its exit frees neither the parent's session
        # nor its shared memory (before: closing waited for good on a thread not in the child).
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-fork")
            arena = gstab.Arena()
            w = arena.add_tensor("w", 64)
            arena.allocate()
            client.register_arena(arena)
            view = arena.view(w)
            run_steps(client, [view], [1])
            # Another thread of the parent in the middle of attaching again (stats() after a
            # gstabd restart) at the fork: its lock, held in the child for good, must not hang
            # the child's calls.
            client._reattach_lock.acquire()
            client._reattaching = -1
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    client.step(2)
                except gstab.Error as e:
                    code = 0 if e.code == 9 and "forked child" in e.message else 2
                # Nor may it connect one of its own: gRPC does not survive fork (its calls
                # hung, or went down the parent's connection).
                try:
                    gstab.Client(node.socket)
                    code = code or 3
                except gstab.Error as e:
                    if e.code != 9 or "start workers anew" not in e.message:
                        code = code or 4
                # The arena's memory is its maker's too, and says so (not "call allocate()").
                try:
                    arena.buffer(w)
                    code = code or 5
                except gstab.Error as e:
                    if e.code != 9 or "made by process" not in e.message:
                        code = code or 6
                client.close()
                del arena
                os._exit(code)
            client._reattaching = None
            client._reattach_lock.release()
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if not done:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            self.assertTrue(done, "the child hung closing its parent's client")
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            run_steps(client, [view], [2])  # the parent's session and memory are intact
            client.register_arena(arena)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_child_of_a_process_that_never_connected_may_connect(self):
        # Only a connection made puts gRPC in the process: a parent whose attempt was refused
        # before that (a wrong path, a setting out of range, a TLS file it cannot read) leaves its
        # forked children free to connect.
        node = Gstabd(ARGS.gstabd)
        try:
            done = run_python(f"""
import os, gstab
try:
    gstab.Client("/tmp/" + "x" * 120)  # longer than a socket's path may be
except gstab.Error as e:
    assert e.code == 3, e
os.environ["GSTAB_KEEPALIVE_MS"] = "5"  # below its least
try:
    gstab.Client({node.socket!r})
    raise SystemExit("a keep-alive of 5 ms was taken")
except gstab.Error as e:
    assert e.code == 3 and "GSTAB_KEEPALIVE_MS" in e.message, e
del os.environ["GSTAB_KEEPALIVE_MS"]
os.environ["GSTAB_TLS_CA"] = "/nonexistent/ca.pem"  # a TLS file that cannot be read
try:
    gstab.Client("127.0.0.1:1")
    raise SystemExit("a TLS CA that cannot be read was taken")
except gstab.Error as e:
    assert "GSTAB_TLS_CA" in e.message, e
del os.environ["GSTAB_TLS_CA"]
pid = os.fork()
if pid == 0:
    try:
        gstab.Client({node.socket!r}).attach("py-fork-fresh")
        os._exit(0)
    except gstab.Error as e:
        print(e, flush=True)
        os._exit(1)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("child 0", done.stdout, done.stdout)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_gstabd_names_one_instance_to_every_client_and_a_new_one_at_each_start(self):
        # What gstab.torch.attach and gstab.jax.attach group a job's workers into nodes by.
        first, second = Gstabd(ARGS.gstabd), Gstabd(ARGS.gstabd)
        try:
            clients = [gstab.Client(first.socket), gstab.Client(first.socket),
                       gstab.Client(second.socket)]
            clients[1].attach("py-instance")  # with or without a session
            instances = [c.daemon_instance() for c in clients]
            self.assertRegex(instances[0], r"^[0-9a-f]{32}$")
            self.assertEqual(instances[0], instances[1])
            self.assertNotEqual(instances[0], instances[2])
            self.assertEqual(first.restart(), 0)
            again = gstab.Client(first.socket).daemon_instance()
            self.assertNotIn(again, instances)
            # gstabd's log names it, for an operator matching workers to gstabds.
            deadline = time.time() + 10
            while f"instance {again}" not in read(first.log):
                self.assertLess(time.time(), deadline, "gstabd's log never named its instance")
                time.sleep(0.05)
            for c in clients:
                c.close()
            with self.assertRaises(gstab.Error) as e:
                gstab.Client(os.path.join(first.dir.name, "nobody.sock")).daemon_instance()
            self.assertEqual(e.exception.code, 14)
            lib = gstab.load_library()  # the C ABI's NULLs: refused, saying which
            self.assertEqual(lib.gstab_daemon_instance(None, ctypes.create_string_buffer(33)), 3)
            self.assertIn(b"client and instance must not be NULL", lib.gstab_last_error())
        finally:
            self.assertEqual(first.stop(), 0)
            self.assertEqual(second.stop(), 0)


if __name__ == "__main__":
    ARGS, argv = command_line()
    unittest.main(argv=argv, verbosity=2)
