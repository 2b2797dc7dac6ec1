"""A job's configuration, checkpoints and jobs across nodes, as a training script drives them
through the Python package against a real gstabd.

    job_control_test.py --gstabd PATH --library PATH
"""
import base64
import math
import os
import re
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import gstab  # noqa: E402
from gstabd import Gstabd, command_line  # noqa: E402
from stepping import fill, one_tensor_job, run_steps  # noqa: E402

ARGS = None


def leaves(value, key=None):
    """(key, value) of every leaf of a JSON document; list items under their list's key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v, key)
    else:
        yield key, value


class JobControlTest(unittest.TestCase):
    """Configuration, checkpoints and jobs across nodes, as a training script does them."""

    @classmethod
    def setUpClass(cls):
        cls.gstabd = Gstabd(ARGS.gstabd)

    @classmethod
    def tearDownClass(cls):
        assert cls.gstabd.stop() == 0

    def test_config_at_attach_sets_the_policy_and_its_parameters(self):
        client = gstab.Client(self.gstabd.socket)
        client.attach("py-clip", config={"policy": "clip", "clip.max_norm": 0.5})
        (w,) = one_tensor_job(client)
        norm = fill(w, 1)
        g = client.step(1).groups[0]
        self.assertAlmostEqual(g.scale, 0.5 / (norm + 1e-6), delta=1e-7 * g.scale)
        self.assertAlmostEqual(g.stabilized_norm, 0.5, delta=1e-6)
        stats = client.stats()
        self.assertEqual(stats["job"], "py-clip")
        self.assertEqual(stats["config"]["policy"], "POLICY_CLIP")
        self.assertEqual(stats["config"]["clip"]["max_norm"], 0.5)
        self.assertEqual(stats["steps"], 1)  # an int, though proto3 JSON writes a string
        self.assertEqual(stats["groups"][0]["group"], "w")
        self.assertEqual(stats["groups"][0]["non_finite_steps"], 0)  # zero fields are there
        # A policy name and settings over it; a second worker may repeat the same config.
        other = gstab.Client(self.gstabd.socket)
        other.attach("py-spam", policy="stabilize-stable-spam", config="non_finite_action=keep")
        config = other.stats()["config"]  # the effective config: the preset's values
        self.assertEqual((config["stabilize"]["beta1"], config["stabilize"]["beta2"]), (0.7, 0.9))
        self.assertEqual(config["non_finite_action"], "NON_FINITE_ACTION_KEEP")

    def test_a_worker_naming_the_other_preset_is_refused_unless_the_betas_were_tuned(self):
        # stabilize is v4's betas: a second worker naming the preset the job does not run is
        # refused, either way round. Once the job's betas are tuned to neither preset's, its
        # workers (restarted with the policy they started with) attach and keep them.
        for job, policy, other, says in [
                ("py-preset-spam", "stabilize-stable-spam", "stabilize",
                 "stabilize.beta1 0.7 (asked: 0.6)"),
                ("py-preset-v4", "stabilize", "stabilize-stable-spam",
                 "stabilize.beta1 0.6 (asked: 0.7)")]:
            first, second = gstab.Client(self.gstabd.socket), gstab.Client(self.gstabd.socket)
            first.attach(job, local_rank=0, local_world_size=2, policy=policy)
            with self.assertRaises(gstab.Error, msg=job) as e:
                second.attach(job, local_rank=1, local_world_size=2, policy=other)
            self.assertEqual(e.exception.code, 9)
            self.assertIn(says, e.exception.message)
            second.attach(job, local_rank=1, local_world_size=2, policy=policy)  # the same one
            first.update_config({"stabilize.beta1": 0.65})
            betas = first.stats()["config"]["stabilize"]
            for again in (other, policy):
                second.attach(job, local_rank=1, local_world_size=2, policy=again)
                self.assertEqual(second.stats()["config"]["stabilize"], betas, again)
            self.assertEqual(betas["beta1"], 0.65)

    def test_a_workers_other_local_world_size_is_refused_saying_how_to_start_over(self):
        with gstab.Client(self.gstabd.socket) as first:
            first.attach("py-lws", local_rank=0, local_world_size=2)
        with gstab.Client(self.gstabd.socket) as client:
            with self.assertRaises(gstab.Error) as e:
                client.attach("py-lws", local_rank=0, local_world_size=1)
            self.assertEqual(e.exception.code, 3, e.exception.message)
            self.assertIn("has local_world_size 2 on this node, not 1", e.exception.message)
            self.assertIn("`gstabctl forget --job=py-lws` once none of its workers or observers "
                          "is attached", e.exception.message)

    def test_bad_settings_are_refused_by_name_and_the_client_still_serves(self):
        client = gstab.Client(self.gstabd.socket)
        for config, says in [("clip.max_nrom=1", "unknown config key 'clip.max_nrom'"),
                             ("policy", "'policy' is not KEY=VALUE"),
                             ({"clip.max_norm": "lots"}, "cannot take the value 'lots'"),
                             ("policy=wobble", "cannot take the value 'wobble'"),
                             ("clip=1", "'clip' is a section, not a value"),
                             ("clip.max_norm=-1", "max_norm")]:
            with self.assertRaises(gstab.Error, msg=config) as e:
                client.attach("py-bad-config", config=config)
            self.assertEqual(e.exception.code, 3, config)
            self.assertIn(says, e.exception.message)
        client.attach("py-bad-config", config="policy=monitor")
        (w,) = one_tensor_job(client)
        fill(w, 1)
        self.assertEqual(client.step(1).groups[0].scale, 1.0)
        with self.assertRaises(gstab.Error) as e:
            client.update_config("")
        self.assertIn("no config settings", e.exception.message)

    def test_update_config_switches_the_policy_from_the_next_step(self):
        client = gstab.Client(self.gstabd.socket)
        client.attach("py-switch")
        (w,) = one_tensor_job(client)
        fill(w, 1)
        self.assertNotEqual(client.step(1).groups[0].scale, 1.0)
        version = client.update_config({"policy": "monitor"})
        self.assertEqual(version, 2)
        fill(w, 2)
        self.assertEqual(client.step(2).groups[0].scale, 1.0)
        history = client.stats()["config_history"]
        self.assertEqual([h["version"] for h in history], [1, 2])
        self.assertEqual(history[1]["effective_step"], 2)
        self.assertEqual(history[1]["config"]["policy"], "POLICY_MONITOR")
        # Every number of the stats, the config history's included, is a Python number: a
        # 64-bit field missing from gstab's list of them would be left a string.
        numbers_as_text = [(key, value) for key, value in leaves(client.stats())
                           if isinstance(value, str) and re.fullmatch(r"-?[0-9.eE+-]+", value)]
        self.assertEqual(numbers_as_text, [])

    def test_exported_state_resumes_the_same_scales_on_another_gstabd(self):
        groups = ("embed", "head")
        first = gstab.Client(self.gstabd.socket)
        first.attach("py-resume", policy="stabilize-stable-spam")
        views = one_tensor_job(first, groups=groups)
        run_steps(first, views, range(1, 11))
        state = first.export_state()
        uninterrupted = run_steps(first, views, range(11, 31))
        # The job moves to another node: a fresh gstabd, the job's checkpoint's bytes.
        elsewhere = Gstabd(ARGS.gstabd)
        try:
            resumed = gstab.Client(elsewhere.socket)
            resumed.attach("py-resume")  # the config comes with the state
            for bad, says in [(b"", "empty"), (b"\x07garbage", "not a gstab JobState"),
                              (state[:-3], "checksum does not match")]:
                with self.assertRaises(gstab.Error) as e:
                    resumed.import_state(bad)
                self.assertEqual(e.exception.code, 3)
                self.assertIn(says, e.exception.message)
            with self.assertRaisesRegex(TypeError, "not int"):
                resumed.import_state(1000)  # bytes(1000) would be a thousand zeros
            self.assertEqual(resumed.import_state(state), 2)
            stats = resumed.stats()
            self.assertEqual(stats["config"]["stabilize"]["beta1"], 0.7)
            self.assertEqual(stats["last_step"], 10)
            self.assertEqual([g["accepted_steps"] for g in stats["groups"]], [10, 10])
            views = one_tensor_job(resumed, groups=groups)
            # Bit for bit the scales the uninterrupted job got, spike at 15 included.
            self.assertEqual(run_steps(resumed, views, range(11, 31)), uninterrupted)
            # Without the state the same steps are scaled otherwise.
            fresh = gstab.Client(elsewhere.socket)
            fresh.attach("py-fresh", policy="stabilize-stable-spam")
            views = one_tensor_job(fresh, groups=groups)
            self.assertNotEqual(run_steps(fresh, views, range(11, 31)), uninterrupted)
            # keep_config: the statistics and step count only; the job's own config stays.
            clipped = gstab.Client(elsewhere.socket)
            clipped.attach("py-keep", policy="clip")
            self.assertEqual(clipped.import_state(state, keep_config=True), 2)
            stats = clipped.stats()
            self.assertEqual(stats["config"]["policy"], "POLICY_CLIP")
            self.assertEqual(stats["last_step"], 10)
            # The statistics came too (re-expressed for the job's own betas).
            self.assertEqual([g["accepted_steps"] for g in stats["groups"]], [10, 10])
            self.assertTrue(all(g["m"] > 0 for g in stats["groups"]), stats["groups"])
        finally:
            self.assertEqual(elsewhere.stop(), 0)

    def test_a_job_across_nodes_has_one_norm_per_group(self):
        # Two nodes, each its own gstabd, talking over loopback TCP (Gloo).
        nodes = [Gstabd(ARGS.gstabd, "--peer_listen=127.0.0.1:0", "--step_timeout_ms=20000")
                 for _ in range(2)]
        try:
            lonely = gstab.Client(nodes[0].socket)
            with self.assertRaises(gstab.Error) as e:  # two ranks but one node, no rendezvous
                lonely.attach("py-nodes", rank=1, world_size=2)
            self.assertIn("node_count", e.exception.message)
            blob = gstab.Client(nodes[0].socket).create_rendezvous("py-nodes", 2)
            self.assertIsInstance(blob, bytes)
            with self.assertRaises(ValueError) as e:  # text that is not the blob's base64
                lonely.attach("py-nodes", node_rank=0, node_count=2, rendezvous="not base64!")
            self.assertIn("gstabctl rendezvous", str(e.exception))
            # Node 1 takes the blob as `gstabctl rendezvous` prints it.
            texts = [blob, base64.b64encode(blob).decode() + "\n"]
            clients = [gstab.Client(n.socket) for n in nodes]
            results, errors = [None, None], []
            together = threading.Barrier(2, timeout=60)

            def worker(rank):
                try:
                    client = clients[rank]
                    client.attach("py-nodes", rank=rank, world_size=2, node_rank=rank,
                                  node_count=2, rendezvous=texts[rank])
                    shard, whole = one_tensor_job(client, groups=("shard", "whole"),
                                                  replicated=("whole",))
                    results[rank] = []
                    for step in range(1, 5):
                        if step == 4:
                            # The job resumes from node 0's state of step 1: a new rendezvous,
                            # and node 0 imports before the first step.
                            together.wait()
                            if rank == 0:
                                texts[:] = [gstab.Client(nodes[0].socket).create_rendezvous(
                                    "py-nodes", 2)] * 2
                            together.wait()
                            client.attach("py-nodes", rank=rank, world_size=2, node_rank=rank,
                                          node_count=2, rendezvous=texts[rank])
                            if rank == 0:
                                client.import_state(saved)
                            shard, whole = one_tensor_job(client, groups=("shard", "whole"),
                                                          replicated=("whole",))
                        norms = fill(shard, step, salt=rank), fill(whole, step)
                        r = client.step(step)
                        results[rank].append((norms, r))
                        if rank == 0 and step == 1:
                            saved = client.export_state()
                except Exception as exc:  # reported by the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(errors, [])
            for step in range(3):
                (n0, whole), r0 = results[0][step]
                (n1, _), r1 = results[1][step]
                self.assertAlmostEqual(r0.groups[0].norm, math.hypot(n0, n1), delta=1e-5 * n0)
                self.assertAlmostEqual(r0.groups[1].norm, whole, delta=1e-5 * whole)
                self.assertEqual([g.scale for g in r0.groups], [g.scale for g in r1.groups])
                self.assertEqual((r0.statistics_rolled_back, r1.statistics_rolled_back), (0, 0))
            # Node 1 had counted two steps more than the statistics it takes from node 0.
            rolled_back = [results[rank][3][1].statistics_rolled_back for rank in (0, 1)]
            self.assertEqual(rolled_back, [0, 2])
        finally:
            for n in nodes:
                self.assertEqual(n.stop(), 0)

    def test_a_node_sharded_group_sums_one_nodes_workers(self):
        # HSDP's layout: two nodes of two workers, each node holding the whole gradient sliced
        # across its workers. Node 1's slices differ here, to show they are not counted.
        nodes = [Gstabd(ARGS.gstabd, "--peer_listen=127.0.0.1:0", "--step_timeout_ms=20000")
                 for _ in range(2)]
        try:
            blob = gstab.Client(nodes[0].socket).create_rendezvous("py-hsdp", 2)
            results, errors = {}, []

            def worker(node, local):
                try:
                    client = gstab.Client(nodes[node].socket)
                    client.attach("py-hsdp", rank=2 * node + local, world_size=4,
                                  local_rank=local, local_world_size=2, node_rank=node,
                                  node_count=2, rendezvous=blob)
                    hsdp, shard = one_tensor_job(client, groups=("hsdp", "shard"),
                                                 node_sharded=("hsdp",))
                    norms = fill(hsdp, 1, salt=10 * node + local), fill(shard, 1, salt=local)
                    results[node, local] = norms, client.step(1)
                except Exception as exc:  # reported by the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(n, l)) for n in (0, 1)
                       for l in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(errors, [])
            node0 = math.hypot(results[0, 0][0][0], results[0, 1][0][0])
            everyone = math.sqrt(sum(r[0][1] ** 2 for r in results.values()))
            for (norms, r) in results.values():
                self.assertEqual([g.group for g in r.groups], ["hsdp", "shard"])
                self.assertAlmostEqual(r.groups[0].norm, node0, delta=1e-5 * node0)
                self.assertAlmostEqual(r.groups[1].norm, everyone, delta=1e-5 * everyone)
        finally:
            for n in nodes:
                self.assertEqual(n.stop(), 0)


if __name__ == "__main__":
    ARGS, argv = command_line()
    unittest.main(argv=argv, verbosity=2)
