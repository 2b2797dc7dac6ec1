"""A worker's session through gstabd's restarts and other workers' attaches, with the Python
package against a real gstabd.

    session_test.py --gstabd PATH --library PATH
"""
import array
import ctypes
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import gstab  # noqa: E402
from gstabd import Gstabd, command_line  # noqa: E402
from stepping import attached_job, fill, one_tensor_job, run_steps  # noqa: E402

ARGS = None


class SessionTest(unittest.TestCase):
    """Each test runs a gstabd of its own, which it restarts or shares among clients."""

    def test_a_restarted_gstabd_is_attached_again_and_the_job_resumes(self):
        # A DaemonSet pod replaced under a running job: the next steps wait for the new gstabd,
        # attach and register again, and continue with the statistics of its checkpoint.
        groups = ("a", "b")
        node = Gstabd(ARGS.gstabd)
        try:
            reference = gstab.Client(node.socket)  # the same steps, uninterrupted
            reference.attach("py-restart-ref", policy="stabilize-stable-spam")
            views = one_tensor_job(reference, groups=groups)
            uninterrupted = run_steps(reference, views, range(1, 21))
            client = gstab.Client(node.socket)
            client.attach("py-restart", policy="stabilize-stable-spam")
            views = one_tensor_job(client, groups=groups)
            scales = run_steps(client, views, range(1, 11))
            self.assertEqual(node.restart(), 0)
            with self.assertLogs("gstab", "WARNING") as logs:
                scales += run_steps(client, views, range(11, 21))
            self.assertEqual(client.reattached, 1)
            self.assertTrue(client.restored)  # from the checkpoint the stop wrote
            self.assertFalse(reference.restored)
            self.assertIn("attached and registered again", logs.output[0])
            self.assertEqual(scales, uninterrupted)  # bit for bit, spike at 15 included
            # Without reattaching, the restart reaches the caller.
            client.reattach_timeout = 0
            node.restart()
            with self.assertRaises(gstab.Error) as e:
                for _ in range(100):  # UNAVAILABLE until the channel reconnects
                    try:
                        run_steps(client, views, [21])
                    except gstab.Error as error:
                        if error.code != 14:
                            raise
                        time.sleep(0.1)
            self.assertEqual(e.exception.code, 16)
            self.assertIn("attach again", e.exception.message)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_reattach_cut_short_after_attaching_leaves_no_registration_behind(self):
        # The re-attach attached, then a later call of it failed (not UNAVAILABLE): the error
        # reaches the caller, and the client, like the new session, holds no arena. It still
        # named the old one before, which gstabd no longer held, and a Stabilizer over it was
        # never told it was no longer registered.
        node = Gstabd(ARGS.gstabd)
        try:
            client, views = attached_job(node.socket, "py-reattach-cut", range(1, 4),
                                         reattach_timeout=20)
            self.assertEqual(node.restart(), 0)
            real_stats, failed = client.stats, []

            def stats_failing_once():
                if not failed:
                    failed.append(True)
                    raise gstab.Error(13, "injected")
                return real_stats()
            client.stats = stats_failing_once
            with self.assertRaises(gstab.Error) as e:
                for _ in range(100):  # UNAVAILABLE until the channel reconnects
                    try:
                        run_steps(client, views, [4])
                        break
                    except gstab.Error as error:
                        if error.code != 14:
                            raise
                        time.sleep(0.1)
            self.assertIn("injected", e.exception.message)
            self.assertIsNone(client.registration)
            with self.assertRaises(gstab.Error) as e:
                run_steps(client, views, [5])
            self.assertEqual(e.exception.code, 9, e.exception.message)  # register first
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_restart_keeps_the_configuration_the_job_was_changed_to(self):
        # The worker attaches again without its attach() configuration: the job's own, changed
        # since (update_config, gstabctl), comes back from the checkpoint. A gstabd with no
        # checkpoint of the job starts it afresh, as attach() asked.
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-config", policy="clip", config={"clip.max_norm": 0.5})
            views = one_tensor_job(client)
            run_steps(client, views, range(1, 3))
            client.update_config({"policy": "monitor"})
            run_steps(client, views, [3])
            self.assertEqual(node.restart(), 0)
            # Not a step first: the job's checkpoint, as a worker saving it after a step would.
            self.assertEqual(gstab.Client(node.socket).attach("py-config-other"), None)
            exported = client.export_state()
            self.assertEqual(client.reattached, 1)
            self.assertEqual(client.import_state(exported), 1)
            run_steps(client, views, [4])
            self.assertEqual(client.reattached, 1)
            config = client.stats()["config"]
            self.assertEqual(config["policy"], "POLICY_MONITOR")
            self.assertEqual(config["clip"]["max_norm"], 0.5)
            self.assertEqual(node.restart(forget=True), 0)
            with self.assertLogs("gstab", "WARNING") as logs:
                run_steps(client, views, [5])
            self.assertEqual(client.reattached, 2)
            self.assertIn("started afresh", logs.output[0])
            config = client.stats()["config"]
            self.assertEqual(config["policy"], "POLICY_CLIP")
            self.assertEqual(config["clip"]["max_norm"], 0.5)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_steps_under_way_while_gstabd_stops_are_attached_again(self):
        # SIGTERM while a worker steps back to back: whatever its calls meet (refused, cut off
        # by the server's stop, no server), it attaches again to the next gstabd.
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-stepping", policy="clip")
            views = one_tensor_job(client)
            failures, done = [], threading.Event()

            def step_on():
                step = 0
                try:
                    while not done.is_set() or client.reattached == 0:
                        step += 1
                        run_steps(client, views, [step])
                except Exception as e:  # noqa: BLE001 (reported below)
                    failures.append(e)

            stepper = threading.Thread(target=step_on)
            stepper.start()
            time.sleep(0.5)
            self.assertEqual(node.restart(down=0.5), 0)
            time.sleep(0.5)
            done.set()
            stepper.join(60)
            self.assertEqual(failures, [])
            self.assertEqual(client.reattached, 1)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_step_a_killed_gstabd_had_begun_to_scale_is_skipped_not_stepped_again(self):
        # SIGKILL while gstabd scales a step's gradients (seen in the arena's progress word,
        # after its last tensor): the worker does not step them again (their norm, and their
        # direction, would be wrong), but zeroes them, and the step's result says skip.
        node = Gstabd(ARGS.gstabd, "--cpu_threads=1")
        over = threading.Event()  # the killers below give up then (the arena goes after)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-killed", policy="clip", config={"clip.max_norm": 1.0})
            numel = 16 << 20  # 64 MiB: scaling takes milliseconds
            arena = gstab.Arena()
            arena.add_tensor("w", numel)
            arena.allocate()
            client.register_arena(arena)
            grads = arena.view(0)
            progress = ctypes.c_uint64.from_address(
                arena._lib.gstab_arena_data(arena._h, 0) + 4 * numel)
            twos = array.array("f", [2.0]) * numel
            zeros = bytes(4 * numel)

            def scaling_after(mark):
                """Waits for gstabd to mark a step other than `mark` as being scaled."""
                while not over.is_set():
                    value = progress.value
                    if value % 4 == 1 and value != mark:
                        return value
                return None

            def kill_while_scaling(times):
                killed = 0  # the word keeps the mark of the step a kill cut off
                for _ in range(times):
                    killed = scaling_after(killed)
                    if killed is None:
                        return
                    node.restart(kill=True)

            killer = threading.Thread(target=kill_while_scaling, args=(2,), daemon=True)
            killer.start()
            step, skipped, wrong = 0, [], []
            while (killer.is_alive() or step < 3) and step < 500:
                step += 1
                grads[:] = twos
                result = client.step(step)
                if result.skip:
                    skipped.append(step)
                    self.assertEqual(grads.cast("B").tobytes(), zeros)
                elif abs(result.norm - 2 * math.sqrt(numel)) > 1e-3 * result.norm or \
                        grads[0] != grads[numel - 1]:
                    wrong.append((step, result.norm, grads[0], grads[numel - 1]))
            over.set()
            killer.join()
            self.assertEqual(wrong, [])
            self.assertEqual(len(skipped), 2)
            self.assertEqual(client.reattached, 2)
            # With no gstabd back in time the step raises, DATA_LOSS still (not to be retried).
            # A step whose scaling the killer did not see (descheduled for those milliseconds
            # on a busy machine) goes through: the next one is tried.
            client.reattach_timeout = 1

            def killed_for_good(first_step):
                """Steps from first_step until gstabd, killed for good while scaling, makes a
                step raise; that error, once gstabd is started again. The gradients are zeroed
                (DATA_LOSS: not to be stepped again)."""
                over.clear()

                def kill():
                    if scaling_after(progress.value) is not None:
                        node.process.kill()
                        node.process.wait()

                killer = threading.Thread(target=kill, daemon=True)
                killer.start()
                with self.assertRaises(gstab.Error) as e:
                    for step in range(first_step, first_step + 500):
                        grads[:] = twos
                        client.step(step)
                over.set()
                killer.join()
                self.assertEqual(grads.cast("B").tobytes(), zeros)
                os.unlink(node.socket)
                node._start()
                return e.exception, step

            error, step = killed_for_good(step + 1)
            self.assertEqual(error.code, 15, error.message)
            self.assertEqual(client._lib.gstab_last_step_unanswered(), 0)  # answered, cut off
            # reattach_timeout=0: the step raises DATA_LOSS at once, its gradients zeroed all
            # the same.
            client.attach("py-killed")
            client.register_arena(arena)
            client.reattach_timeout = 0
            error, step = killed_for_good(step + 1)
            self.assertEqual(error.code, 15, error.message)
            self.assertIn("were zeroed: skip it", error.message)
        finally:
            over.set()
            self.assertEqual(node.stop(), 0)

    def test_a_frozen_gstabd_is_waited_for_no_longer_than_the_call_timeout(self):
        # A gstabd that is stopped (SIGSTOP), not gone: a call gives up after
        # $GSTAB_CALL_TIMEOUT_S (by default minutes past gstabd's step timeout), saying so. A
        # step so given up is DATA_LOSS, its gradients zeroed: gstabd may still scale them when
        # it runs again.
        node = Gstabd(ARGS.gstabd)
        os.environ["GSTAB_CALL_TIMEOUT_S"] = "2"
        try:
            client = gstab.Client(node.socket, reattach_timeout=0)
            client.attach("py-frozen")
            views = one_tensor_job(client)
            run_steps(client, views, [1])

            def frozen_step(client, views):
                os.kill(node.process.pid, signal.SIGSTOP)
                tasks = f"/proc/{node.process.pid}/task"
                for _ in range(500):  # stopped once every thread is

                    def state(task):
                        with open(f"{tasks}/{task}/stat") as f:
                            return f.read().rsplit(")", 1)[1].split()[0]

                    if all(state(t) == "T" for t in os.listdir(tasks)):
                        break
                    time.sleep(0.01)
                try:
                    with self.assertRaises(gstab.Error) as e:
                        run_steps(client, views, [2])
                finally:
                    os.kill(node.process.pid, signal.SIGCONT)
                self.assertEqual(e.exception.code, 15, e.exception.message)
                self.assertEqual(client._lib.gstab_last_step_unanswered(), 1)  # this thread's
                self.assertIn("it may still scale step 2's gradients", e.exception.message)
                self.assertIn("were zeroed: skip it", e.exception.message)
                self.assertEqual(bytes(views[0].cast("B")), bytes(len(views[0].cast("B"))))
                return e.exception.message

            self.assertIn("did not answer within 2s", frozen_step(client, views))
            # A client that re-attaches by itself does not try it on the frozen gstabd (another
            # call timeout): told within the one.
            eager, eager_views = attached_job(node.socket, "py-frozen-eager", [1],
                                              reattach_timeout=20)
            self.assertNotIn("attaching again", frozen_step(eager, eager_views))
            self.assertEqual(eager.reattached, 0)
            run_steps(eager, eager_views, [3])  # gstabd back: the session goes on
            # The same when gstabd stops answering the connection's pings first (by default
            # after five minutes and 20 s, before a step's call timeout runs out).
            os.environ.update(GSTAB_CALL_TIMEOUT_S="60", GSTAB_KEEPALIVE_MS="1000",
                              GSTAB_KEEPALIVE_TIMEOUT_MS="2000")
            try:
                pinged = gstab.Client(node.socket, reattach_timeout=0)
            finally:
                del os.environ["GSTAB_KEEPALIVE_MS"], os.environ["GSTAB_KEEPALIVE_TIMEOUT_MS"]
            pinged.attach("py-frozen-pinged")
            pinged_views = one_tensor_job(pinged)
            run_steps(pinged, pinged_views, [1])
            self.assertIn("keepalive watchdog timeout", frozen_step(pinged, pinged_views))
            # close() waits 3 s at most too (its detach), whatever the call timeout (60 s).
            os.environ["GSTAB_CALL_TIMEOUT_S"] = "60"
            frozen = gstab.Client(node.socket)
            frozen.attach("py-frozen-close")
            os.kill(node.process.pid, signal.SIGSTOP)
            start = time.monotonic()
            try:
                frozen.close()
            finally:
                os.kill(node.process.pid, signal.SIGCONT)
            self.assertLess(time.monotonic() - start, 6)
        finally:
            del os.environ["GSTAB_CALL_TIMEOUT_S"]
            self.assertEqual(node.stop(), 0)

    def test_a_round_that_comes_after_a_workers_call_gave_up_applies_nothing(self):
        # A worker whose step call gave up (no answer within its call timeout) zeroes its
        # gradients and goes on to its next backward pass; the round it waited in, run later
        # when the job's other worker comes, must not scale them.
        node = Gstabd(ARGS.gstabd)
        os.environ["GSTAB_CALL_TIMEOUT_S"] = "1"
        try:
            first = gstab.Client(node.socket, reattach_timeout=0)
        finally:
            del os.environ["GSTAB_CALL_TIMEOUT_S"]
        try:
            first.attach("py-gave-up", world_size=2, local_world_size=2)
            views0 = one_tensor_job(first)
            second = gstab.Client(node.socket)
            second.attach("py-gave-up", rank=1, world_size=2, local_rank=1, local_world_size=2)
            views1 = one_tensor_job(second)
            fill(views0[0], 1)
            fill(views1[0], 1, salt=1)
            with self.assertRaises(gstab.Error) as lost:
                first.step(1)  # rank 1 does not come within its 1 s
            self.assertEqual(lost.exception.code, 15, lost.exception.message)  # DATA_LOSS
            fill(views0[0], 2)  # its next step's gradients
            before = bytes(views0[0].cast("B"))
            # gstabd's deadline for the call is the client's as the request reached it (the
            # same instant, give or take the socket's latency).
            time.sleep(0.2)
            with self.assertRaises(gstab.Error) as late:
                second.step(1)
            self.assertEqual(late.exception.code, 4, late.exception.message)
            self.assertIn("came after a worker's call of it gave up", late.exception.message)
            self.assertIn("nothing was applied", late.exception.message)
            self.assertEqual(bytes(views0[0].cast("B")), before)
            self.assertEqual(second.stats()["last_step"], 0)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_two_processes_of_one_local_rank_do_not_take_it_from_each_other(self):
        # A launcher that gives two workers the same local rank: the second attach replaces the
        # first's session, and the first is told so (ABORTED) instead of attaching again, which
        # would replace the second's in turn, at every step.
        node = Gstabd(ARGS.gstabd)
        try:
            first, second = gstab.Client(node.socket), gstab.Client(node.socket)
            first.attach("py-twins")
            views = one_tensor_job(first)
            run_steps(first, views, [1])
            second.attach("py-twins")
            second_views = one_tensor_job(second)
            with self.assertRaises(gstab.Error) as e:
                run_steps(first, views, [2])
            self.assertEqual(e.exception.code, 10)
            self.assertIn("another process attached as that local rank", e.exception.message)
            self.assertEqual(first.reattached, 0)
            run_steps(second, second_views, [2])  # the second keeps the rank
            # Also a step under way when its rank is taken (it waits for local rank 1).
            third, fourth = gstab.Client(node.socket), gstab.Client(node.socket)
            third.attach("py-twins-2", local_rank=0, local_world_size=2)
            third_views = one_tensor_job(third)
            failed = []

            def step():
                try:
                    run_steps(third, third_views, [1])
                except gstab.Error as error:
                    failed.append(error)

            waiting = threading.Thread(target=step)
            waiting.start()
            deadline = time.monotonic() + 10
            while third.stats().get("arrived_local_ranks") != [0]:  # its Step waits for rank 1
                self.assertLess(time.monotonic(), deadline, "local rank 0's Step never arrived")
                time.sleep(0.005)
            fourth.attach("py-twins-2", local_rank=0, local_world_size=2)
            waiting.join()
            # ABORTED at once, not DEADLINE_EXCEEDED after gstabd's step timeout (60 s) for
            # local rank 1.
            self.assertEqual([e.code for e in failed], [10])
            self.assertEqual(third.reattached, 0)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_gstabd_down_for_seconds_is_attached_again_soon_after_it_is_back(self):
        # Each failed call has the client connect again at once: gRPC's own backoff (up to
        # 120 s) would have the worker wait long after the new gstabd serves.
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-down", policy="stabilize-stable-spam")
            views = one_tensor_job(client)
            run_steps(client, views, range(1, 4))
            back = []
            # Down 20 s: gRPC's backoff would retry about 26 s after the first failure (6 s after
            # gstabd is back), the client's own retries within a second.
            restart = threading.Thread(target=lambda: back.append((node.restart(down=20),
                                                                   time.monotonic())))
            restart.start()
            time.sleep(0.5)  # down now
            run_steps(client, views, [4])
            stepped = time.monotonic()
            restart.join()
            self.assertEqual(back[0][0], 0)
            self.assertEqual(client.reattached, 1)
            self.assertLess(stepped - back[0][1], 4.5, "the step came long after gstabd was back")
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_monitoring_thread_and_the_training_thread_both_ride_out_a_restart(self):
        # stats() on a monitoring thread and step() on the training thread both find gstabd
        # gone: one attaches and registers again, the other waits for it and goes on in its
        # session (it raised UNAVAILABLE while the first was attaching again).
        node = Gstabd(ARGS.gstabd)
        try:
            client, views = attached_job(node.socket, "py-two-threads", range(1, 4))
            errors, done = [], threading.Event()

            def monitor():
                while not done.is_set():
                    try:
                        client.stats()
                    except gstab.Error as e:
                        errors.append(e)
                        return
                    time.sleep(0.02)
            watcher = threading.Thread(target=monitor)
            restart = threading.Thread(target=lambda: node.restart(down=2))
            watcher.start()
            restart.start()
            try:
                time.sleep(0.5)  # down now
                run_steps(client, views, range(4, 7))
            finally:
                done.set()
                watcher.join()
                restart.join()
            self.assertEqual(errors, [])
            self.assertEqual(client.reattached, 1)
            self.assertEqual(client.stats()["last_step"], 6)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_an_arena_stays_registered_while_it_is_registered_again(self):
        # Attaching again registers the same arena again: a Stabilizer's step on another thread
        # meanwhile must find its arena still the client's registration (it raised "no longer
        # registered: make a new Stabilizer" while gstab_register_arena ran).
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-registered-meanwhile")
            run_steps(client, one_tensor_job(client), range(1, 3))
            arena = client.registration
            seen = []

            class Watching:
                def __init__(self, lib):
                    self._lib = lib

                def __getattr__(self, name):
                    function = getattr(self._lib, name)
                    if name != "gstab_register_arena":
                        return function

                    def register(*args):
                        seen.append(client.registration)
                        return function(*args)
                    return register
            client._lib = Watching(client._lib)
            client.register_arena(arena)  # again, in the same session
            self.assertEqual(node.restart(), 0)
            with self.assertLogs("gstab", "WARNING"):
                client.step(3)  # attaches and registers again
            self.assertEqual(client.reattached, 1)
            self.assertEqual(len(seen), 2)
            for registered in seen:
                self.assertIs(registered, arena)
            self.assertIs(client.registration, arena)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_registration_after_a_restart_attaches_again_first(self):
        # A Stabilizer made after gstabd restarted (a new model, an evaluation) registers as a
        # step would step: attached again, the job resumed.
        node = Gstabd(ARGS.gstabd)
        try:
            client = gstab.Client(node.socket)
            client.attach("py-register-after")
            run_steps(client, one_tensor_job(client), range(1, 4))
            self.assertEqual(node.restart(), 0)
            with self.assertLogs("gstab", "WARNING"):
                views = one_tensor_job(client)
            self.assertEqual(client.reattached, 1)
            self.assertTrue(client.restored)
            run_steps(client, views, [4])
            self.assertEqual(client.stats()["last_step"], 4)
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_new_client_attaches_at_once_after_a_restart(self):
        # gRPC shares connections within a process: the one an earlier client made to the
        # gstabd that was replaced must not fail a new client's first call.
        node = Gstabd(ARGS.gstabd)
        try:
            gstab.Client(node.socket).attach("py-before")
            self.assertEqual(node.restart(), 0)
            gstab.Client(node.socket).attach("py-after")
        finally:
            self.assertEqual(node.stop(), 0)

    def test_a_client_with_a_certificate_of_gstabds_client_ca_reaches_its_tcp_port(self):
        # gstabd --listen: mutual TLS, the client's PEM files named by GSTAB_TLS_*. Over TCP a
        # worker changes its job as over the socket, but registers no host shared memory.
        with tempfile.TemporaryDirectory() as pki:
            make_test_tls(pki)
            node = Gstabd(ARGS.gstabd, "--listen=127.0.0.1:0", f"--tls_cert={pki}/peer.pem",
                          f"--tls_key={pki}/peer.key", f"--tls_client_ca={pki}/ca.pem")
            saved = dict(os.environ)
            try:
                address = node.tcp_address()
                with self.assertRaises(gstab.Error) as e:
                    gstab.Client(address)
                self.assertEqual(e.exception.code, 3)
                self.assertIn("GSTAB_TLS_CA is not set", e.exception.message)
                os.environ.update(GSTAB_TLS_CA=f"{pki}/ca.pem", GSTAB_TLS_CERT=f"{pki}/peer.pem",
                                  GSTAB_TLS_KEY=f"{pki}/peer.key", GSTAB_TLS_NAME="gstab-peer")
                remote = gstab.Client(address)
                remote.attach("py-tcp", policy="stabilize")
                self.assertEqual(remote.update_config({"policy": "monitor"}), 2)
                self.assertEqual(remote.stats()["config"]["policy"], "POLICY_MONITOR")
                with self.assertRaises(gstab.Error) as e:
                    one_tensor_job(remote)
                self.assertEqual(e.exception.code, 7)
                self.assertIn("only over gstabd's unix socket", e.exception.message)
                remote.close()
            finally:
                os.environ.clear()
                os.environ.update(saved)
                self.assertEqual(node.stop(), 0)


def make_test_tls(folder: str) -> None:
    """A CA (ca.pem) and a certificate it signs for "gstab-peer" (peer.pem, peer.key), for
    server and client use alike."""
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    subprocess.run(
        f"openssl req -x509 {ec} -keyout ca.key -out ca.pem -subj /CN=gstab-test-ca && "
        f"openssl req {ec} -keyout peer.key -out peer.csr -subj /CN=gstab-peer && printf "
        "'subjectAltName=DNS:gstab-peer\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext && "
        "openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile ext -out peer.pem", shell=True, cwd=folder, check=True, capture_output=True)


if __name__ == "__main__":
    ARGS, argv = command_line()
    unittest.main(argv=argv, verbosity=2)
