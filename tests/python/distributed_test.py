"""Jobs of several processes through real gstabds: examples/torch_data_parallel.py under
torchrun (DDP, FSDP2, HSDP; one node or several, checkpointed and resumed) and
examples/jax_train.py as jax.distributed processes, all on the CPU over Gloo.

    distributed_test.py --gstabd PATH --library PATH    # with PyTorch and JAX installed
"""
import json
import math
import os
import sys
import tempfile
import unittest

import frameworks
from frameworks import (EXAMPLES, SPIKE_STEP, GstabdTest, free_port, peer_gstabds,
                        run_together)
from gstabd import Gstabd


class DistributedDataParallelTest(GstabdTest):
    """examples/torch_data_parallel.py under torchrun over Gloo (DDP, FSDP2, HSDP): ranks on
    this node, or on several nodes (a torchrun each, each node with a gstabd of its own)."""

    EXAMPLE = os.path.join(EXAMPLES, "torch_data_parallel.py")

    def run_ranks(self, job, *args, replicated="auto", steps=SPIKE_STEP, sockets=None,
                  per_node=1):
        """Runs the job's ranks: two on one node (sockets: None for the class's gstabd, or one
        other), or `per_node` on each node, one per socket; returns each rank's report and the
        output."""
        env = frameworks.example_env()
        common = [self.EXAMPLE, "--job", job, "--replicated", replicated, "--steps", str(steps),
                  "--spike_steps", str(SPIKE_STEP), *args]
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        with tempfile.TemporaryDirectory(prefix="gstab-ddp-") as folder:
            env = dict(env, TMPDIR=folder)  # torchrun's own log folders go with it
            sockets = sockets or [self.gstabd.socket]
            if len(sockets) == 1:
                commands = [torchrun + ["--standalone", "--nproc_per_node=2", *common,
                                        "--socket", sockets[0], "--report", folder]]
            else:
                port = free_port()
                commands = [torchrun + [f"--nnodes={len(sockets)}", f"--node_rank={node}",
                                        f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1",
                                        f"--master_port={port}", *common, "--socket", sock,
                                        "--report", folder]
                            for node, sock in enumerate(sockets)]
            output = run_together(self, commands, env)
            results = []
            for rank in range(2 if len(sockets) == 1 else len(sockets) * per_node):
                with open(os.path.join(folder, f"rank{rank}.json")) as f:
                    results.append(json.load(f))
            return results, output

    def test_ddp_gradients_are_replicated_norms_not_summed_and_ranks_stay_in_step(self):
        ranks, output = self.run_ranks("ddp-replicated")
        self.assertNotIn("gstab:", output)  # no warning: DDP kept the gradients in place
        for rank in ranks:
            for record in rank["steps"]:  # gstab's norm is the all-reduced gradient's own
                self.assertAlmostEqual(record["gstab_norm"] / record["norm"], 1.0, delta=1e-5)
        self.assertEqual([r["scale"] for r in ranks[0]["steps"]],
                         [r["scale"] for r in ranks[1]["steps"]])
        self.assertTrue(ranks[0]["steps"][-1]["spike"])
        self.assertEqual(ranks[0]["parameters"], ranks[1]["parameters"])
        self.assertTrue(all(math.isfinite(x) for x in ranks[0]["parameters"]))
        self.assertIn(f"step {SPIKE_STEP:4d}", output)  # rank 0's progress lines

    def test_two_torchrun_nodes_on_one_gstabd_are_one_node_of_two_ranks(self):
        # One pod a GPU: each pod's torchrun says one rank a node, and both pods reach their
        # Kubernetes node's gstabd. gstab makes them one node of two local ranks (before, the
        # second attached as another node of the same job on that gstabd and was refused).
        sockets = [self.gstabd.socket] * 2
        ranks, output = self.run_ranks("ddp-pods", sockets=sockets)
        self.assertNotIn("gstab:", output)
        for rank in ranks:  # replicated: one node's norm is the all-reduced gradient's own
            for record in rank["steps"]:
                self.assertAlmostEqual(record["gstab_norm"] / record["norm"], 1.0, delta=1e-5)
        self.assertEqual([r["scale"] for r in ranks[0]["steps"]],
                         [r["scale"] for r in ranks[1]["steps"]])
        self.assertEqual([r["gstab_layout"] for r in ranks], [[0, 2, 0, 1], [1, 2, 0, 1]])

    def test_the_same_gradients_registered_sharded_count_every_rank(self):
        ranks, _ = self.run_ranks("ddp-sharded", replicated="false")
        for record in ranks[0]["steps"]:
            self.assertAlmostEqual(record["gstab_norm"] / record["norm"], math.sqrt(2),
                                   delta=1e-5)

    def check_fsdp_norms(self, ranks):
        """gstab's norm of each tensor's group is the whole tensor's, on every rank."""
        for rank in ranks:
            for record in rank["steps"]:
                self.assertAlmostEqual(record["gstab_norm"] / record["norm"], 1.0, delta=1e-5)
                self.assertEqual(set(record["groups"]), set(record["tensor_norms"]))
                for name, (norm, _) in record["groups"].items():
                    self.assertAlmostEqual(norm / record["tensor_norms"][name], 1.0,
                                           delta=1e-5, msg=name)
        for rank in ranks[1:]:
            self.assertEqual([r["groups"] for r in rank["steps"]],
                             [r["groups"] for r in ranks[0]["steps"]])
            self.assertEqual(rank["parameters"], ranks[0]["parameters"])
        self.assertTrue(ranks[0]["steps"][-1]["spike"])

    def test_fsdp2_shards_make_each_tensors_whole_norm(self):
        # One group per tensor: the last layer's rows are fewer than the ranks, so rank 1 holds
        # empty shards of it and registers a placeholder for their groups.
        ranks, output = self.run_ranks("fsdp-per-tensor", "--fsdp", "--group", "")
        self.assertNotIn("gstab:", output)  # FSDP2 accumulated into the registered shards
        self.check_fsdp_norms(ranks)

    def run_on_two_nodes(self, job, *args, per_node=1, steps=SPIKE_STEP):
        """run_ranks on two nodes, each with a gstabd of its own."""
        nodes = peer_gstabds(2)
        try:
            return self.run_ranks(job, *args, sockets=[n.socket for n in nodes],
                                  per_node=per_node, steps=steps)
        finally:
            for n in nodes:
                self.assertEqual(n.stop(), 0)

    def test_a_job_across_two_nodes_reduces_its_norms_across_them(self):
        # FSDP2 over two nodes, one rank each: every group's squares are summed across the
        # nodes; node 1 has only placeholders for the last layer's groups.
        ranks, _ = self.run_on_two_nodes("fsdp-two-nodes", "--fsdp", "--group", "")
        self.check_fsdp_norms(ranks)

    def test_hsdp_on_two_nodes_of_two_ranks_counts_one_nodes_shards(self):
        # Each node holds the whole (averaged) gradient, sharded across its two ranks: gstab
        # registers the shards node-sharded, so each group's norm is the whole tensor's, not
        # sqrt(2) times it.
        ranks, output = self.run_on_two_nodes("hsdp-two-nodes", "--hsdp", "--group", "",
                                              per_node=2)
        self.assertNotIn("gstab:", output)
        self.assertEqual([r["gstab_layout"] for r in ranks],
                         [[0, 2, 0, 2], [1, 2, 0, 2], [0, 2, 1, 2], [1, 2, 1, 2]])
        self.check_fsdp_norms(ranks)

    def check_resumed_bit_for_bit(self, job, *args, nodes=1):
        """The job run whole, and run to step 20, checkpointed (torch.distributed.checkpoint)
        and resumed on other gstabds: the same scales and final weights, bit for bit. nodes:
        1 (two ranks on one node) or 2 (a rank on each, each node with a gstabd of its own)."""
        steps = SPIKE_STEP + 10
        run = self.run_ranks if nodes == 1 else self.run_on_two_nodes
        whole, _ = run(job + "-whole", *args, steps=steps)
        with tempfile.TemporaryDirectory(prefix="gstab-ckpt-") as folder:
            checkpoint = os.path.join(folder, "step20")
            run(job, *args, "--save", checkpoint, steps=20)
            # The job comes back on other nodes.
            elsewhere = ([Gstabd(frameworks.ARGS.gstabd)] if nodes == 1
                         else peer_gstabds(2))
            try:
                resumed, _ = self.run_ranks(job, *args, "--resume", checkpoint, steps=steps,
                                            sockets=[g.socket for g in elsewhere])
            finally:
                for g in elsewhere:
                    self.assertEqual(g.stop(), 0)
        for rank in (0, 1):
            self.assertEqual([r["step"] for r in resumed[rank]["steps"]],
                             list(range(21, steps + 1)))
            self.assertEqual([r["scale"] for r in resumed[rank]["steps"]],
                             [r["scale"] for r in whole[rank]["steps"][20:]])
            self.assertEqual(resumed[rank]["parameters"], whole[rank]["parameters"])
        self.assertTrue(resumed[0]["steps"][SPIKE_STEP - 21]["spike"])

    def test_a_state_given_on_one_rank_only_is_refused_on_every_rank(self):
        # Rank 0 alone importing would wait in a collective the other rank never enters (its
        # DDP's would meet it instead): the job hung.
        worker = os.path.join(os.path.dirname(__file__), "torch_state_worker.py")
        with tempfile.TemporaryDirectory(prefix="gstab-state-") as folder:
            run_together(self, [[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node=2", worker, "--socket", self.gstabd.socket,
                                 "--job", "state-on-rank-0", "--report", folder]],
                         dict(frameworks.example_env(), TMPDIR=folder))
            reports = []
            for rank in range(2):
                with open(os.path.join(folder, f"rank{rank}.json")) as f:
                    reports.append(json.load(f))
        for report in reports:
            self.assertIn("state= was given on 1 of 2 ranks", report["refusal"] or "")
            self.assertGreater(report["norm"], 0)

    def test_a_ddp_job_resumed_from_its_checkpoint_on_another_gstabd_continues_bit_for_bit(self):
        self.check_resumed_bit_for_bit("ddp-resumed")

    def test_an_fsdp2_job_resumed_from_its_checkpoint_continues_bit_for_bit(self):
        self.check_resumed_bit_for_bit("fsdp-resumed", "--fsdp")

    def test_a_job_across_two_nodes_resumed_on_other_gstabds_continues_bit_for_bit(self):
        # Node 0 imports the checkpoint; node 1 takes its statistics at the first step (before,
        # node 1's import was refused, and every rank failed).
        self.check_resumed_bit_for_bit("nodes-resumed", nodes=2)


class JaxProcessesTest(unittest.TestCase):
    """examples/jax_train.py as two jax.distributed processes, each host with a gstabd."""

    def run_hosts(self, job, replicated, gstabds=2):
        """examples/jax_train.py as two processes of jax.distributed, each on a "host" with a
        gstabd of its own (gstabds=1: both with one gstabd); returns each process's report, and
        their outputs."""
        example, env = os.path.join(EXAMPLES, "jax_train.py"), frameworks.example_env()
        started = peer_gstabds(gstabds)
        hosts = started * (2 // gstabds)
        coordinator = f"127.0.0.1:{free_port()}"
        try:
            with tempfile.TemporaryDirectory(prefix="gstab-jax-") as folder:
                output = run_together(self, [
                    [sys.executable, example, "--socket", host.socket, "--job", job,
                     "--coordinator", coordinator, "--num_processes", "2", "--process_id",
                     str(i), "--replicated", replicated, "--report", f"{folder}/{i}.json"]
                    for i, host in enumerate(hosts)], env)
                reports = []
                for i in range(2):
                    with open(f"{folder}/{i}.json") as f:
                        reports.append(json.load(f))
                return reports, output
        finally:
            for host in started:
                self.assertEqual(host.stop(), 0)

    def test_processes_on_two_hosts_share_one_replicated_gradient(self):
        reports, output = self.run_hosts("jax-two-hosts", "true")
        self.assertNotIn("RuntimeWarning", output)
        self.assertEqual([r["gstab_layout"] for r in reports], [[0, 1, 0, 2], [0, 1, 1, 2]])
        for report in reports:  # gstab's norm is the averaged gradient's own
            for record in report["steps"]:
                self.assertAlmostEqual(record["norm"] / record["grad_norm"], 1.0, delta=1e-5)
            self.assertEqual([r["step"] for r in report["steps"] if r["spike"]], [30, 45])
        self.assertEqual([r["scale"] for r in reports[0]["steps"]],
                         [r["scale"] for r in reports[1]["steps"]])
        self.assertEqual(reports[0]["parameters"], reports[1]["parameters"])
        # Registered as slices instead, the norm sums both hosts' squares, through their gstabds,
        # with a warning on each process that names the copies.
        reports, output = self.run_hosts("jax-two-hosts-sharded", "false")
        self.assertEqual(output.count("is replicated across processes"), 2, output)
        for record in reports[0]["steps"]:
            self.assertAlmostEqual(record["norm"] / record["grad_norm"], math.sqrt(2),
                                   delta=1e-5)

    def test_two_processes_with_one_gstabd_are_one_node(self):
        # Two processes, two containers, one gstabd: one node of two local workers sharing its
        # statistics, where before each process was taken for a host and the second refused.
        reports, _ = self.run_hosts("jax-one-gstabd", "true", gstabds=1)
        self.assertEqual([r["gstab_layout"] for r in reports], [[0, 2, 0, 1], [1, 2, 0, 1]])
        for report in reports:
            for record in report["steps"]:
                self.assertAlmostEqual(record["norm"] / record["grad_norm"], 1.0, delta=1e-5)
        self.assertEqual([r["scale"] for r in reports[0]["steps"]],
                         [r["scale"] for r in reports[1]["steps"]])

    def test_global_arrays_are_read_and_remade_from_this_process_s_shards(self):
        # Gradients as a multi-process jit leaves them: global arrays replicated over a mesh of
        # both processes' devices. They were put back with device_put, which gathers every
        # process's copy to compare them, and failed both processes at a NaN (monitor keeps
        # it). A leaf sharded across the processes was taken, and failed at the first step.
        worker, env = os.path.join(os.path.dirname(__file__), "jax_global_worker.py"), \
            frameworks.example_env()
        started = peer_gstabds(2)
        coordinator = f"127.0.0.1:{free_port()}"
        try:
            with tempfile.TemporaryDirectory(prefix="gstab-jax-global-") as folder:
                run_together(self, [
                    [sys.executable, worker, "--socket", host.socket, "--job", "jax-global",
                     "--coordinator", coordinator, "--process_id", str(i),
                     "--report", f"{folder}/{i}.json"] for i, host in enumerate(started)], env)
                reports = []
                for i in range(2):
                    with open(f"{folder}/{i}.json") as f:
                        reports.append(json.load(f))
        finally:
            for host in started:
                self.assertEqual(host.stop(), 0)
        w_norm = math.sqrt(sum(x * x for x in
                               [-1 + 2 * i / 23 for i in range(24)]))
        for report in reports:
            self.assertFalse(report["fully_addressable"])  # the case at hand
            for step in ("step1", "step2", "step3"):
                self.assertTrue(report[step]["same_sharding"], report)
                self.assertTrue(report[step]["equal"], report)
            self.assertAlmostEqual(report["step1"]["norms"]["w"], w_norm, places=4)
            self.assertAlmostEqual(report["step1"]["norms"]["b"], math.sqrt(5), places=5)
            self.assertTrue(math.isnan(report["step2"]["norms"]["w"]), report)
            self.assertIn("leaf 's' is sharded across processes", report["sharded_refusal"])
            self.assertIn("local_rank 1 is not process 1's", report["wrong_local_rank"])


if __name__ == "__main__":
    frameworks.main()
