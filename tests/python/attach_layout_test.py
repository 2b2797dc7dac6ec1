"""gstab.torch.attach and gstab.jax.attach: which node, local rank and node rank each worker
attaches as, from its gstabd's instance (or, from a gstabd of an earlier release, torchrun's
variables or the hosts' names), with the collectives faked: what each rank would gather.

    attach_layout_test.py --gstabd PATH --library PATH   # with PyTorch and JAX installed

The same layouts through real processes and a real gstabd are distributed_test.py's.
"""
import os
import unittest
from unittest import mock

import numpy as np
import torch

import frameworks
import gstab
import gstab.jax
import gstab.torch

TORCHRUN = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "WORLD_SIZE")


class Recorder:
    """A client that records what attach asks of it; `instance` is its gstabd's answer (None:
    of an earlier release; an Error: it could not be asked)."""

    def __init__(self, instance=None):
        self.asked, self.instance = {}, instance
        self.rendezvous_nodes = None

    def daemon_instance(self):
        if isinstance(self.instance, gstab.Error):
            raise self.instance
        return self.instance

    def create_rendezvous(self, job, nodes, cuda=False):
        self.rendezvous_nodes = nodes
        return b"blob"

    def attach(self, job, **arguments):
        self.asked.update(arguments)


def torch_attach(rank, world, instances=None, hosts=None, given=None, **kwargs):
    """The client gstab.torch.attach used, with what it asked Client.attach for in .asked, as
    global rank `rank` of `world` (None: torch.distributed not initialized), the ranks' gstabds
    being `instances` (default: all of an earlier release), their hosts `hosts`, and the
    (local_rank, node_rank) the other ranks gave `given`, the process group faked."""
    dist = torch.distributed
    world_list = range(world or 1)
    instances = instances or [None for _ in world_list]
    hosts = hosts or ["host" for _ in world_list]
    given = given or [(None, None) for _ in world_list]
    client = Recorder(instances[rank or 0])

    def broadcast(message, src, group=None):
        message[0] = b"blob"

    def gather(out, mine, group=None):
        # Every rank's answer as its own client would give it; this rank's is the real one.
        out[:] = [mine if r == rank else
                  (None if isinstance(i, gstab.Error) else i, h,
                   i if isinstance(i, gstab.Error) else None, g)
                  for r, (i, h, g) in enumerate(zip(instances, hosts, given))]
    with mock.patch.object(dist, "is_initialized", return_value=rank is not None), \
            mock.patch.object(dist, "get_rank", return_value=rank), \
            mock.patch.object(dist, "get_world_size", return_value=world), \
            mock.patch.object(dist, "get_backend", return_value="gloo"), \
            mock.patch.object(dist, "all_gather_object", gather), \
            mock.patch.object(dist, "broadcast_object_list", broadcast), \
            mock.patch("socket.gethostname", return_value=hosts[rank or 0]):
        gstab.torch.attach(client, "job", cuda=False, **kwargs)
    return client


def layout(client):
    asked = client.asked
    return (asked["local_rank"], asked["local_world_size"], asked["node_rank"],
            asked["node_count"])


class TorchAttachTest(unittest.TestCase):
    def setUp(self):
        saved = {k: os.environ.pop(k) for k in TORCHRUN if k in os.environ}

        def restore():
            for k in TORCHRUN:
                os.environ.pop(k, None)
            os.environ.update(saved)
        self.addCleanup(restore)

    def torchrun(self, local_rank, local_world, group_rank):
        os.environ.update(LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(local_world),
                          GROUP_RANK=str(group_rank))

    def test_the_ranks_of_one_gstabd_are_one_node_whatever_torchrun_says(self):
        # One pod a GPU: torchrun in each pod says one rank a node, each pod its own host name;
        # two pods on each Kubernetes node share its gstabd (the DaemonSet's).
        instances = ["a" * 32, "a" * 32, "b" * 32, "b" * 32]
        pods = ["pod-0", "pod-1", "pod-2", "pod-3"]
        expected = [(0, 2, 0, 2), (1, 2, 0, 2), (0, 2, 1, 2), (1, 2, 1, 2)]
        for rank in range(4):
            self.torchrun(0, 1, rank)
            client = torch_attach(rank, 4, instances, pods)
            self.assertEqual(layout(client), expected[rank])
            self.assertEqual(client.node_ranks, [[0, 1], [2, 3]])
        # The nodes in the order of their first rank, the local ranks in global rank order.
        instances = ["b" * 32, "a" * 32, "b" * 32, "a" * 32]
        self.assertEqual(layout(torch_attach(3, 4, instances)), (1, 2, 1, 2))
        self.assertEqual(layout(torch_attach(2, 4, instances)), (1, 2, 0, 2))
        # Two processes on one host, each with a gstabd of its own (the tests' two nodes).
        self.assertEqual(layout(torch_attach(1, 2, ["a" * 32, "b" * 32])), (0, 1, 1, 2))
        with self.assertRaisesRegex(ValueError, r"different numbers of ranks \(by node: 0, 1; 2"):
            torch_attach(0, 3, ["a" * 32, "a" * 32, "b" * 32])

    def test_a_process_group_of_one_is_a_node_of_one_whatever_the_launcher_says(self):
        # Each process its own group (a sweep inside a torchrun allocation of 8 a node).
        self.torchrun(3, 8, 1)
        self.assertEqual(layout(torch_attach(0, 1)), (0, 1, 0, 1))

    def test_a_rank_whose_gstabd_cannot_be_asked_fails_every_ranks_attach(self):
        lost = gstab.Error(14, "no gstabd at unix:/run/gstab/gstab.sock")
        for rank in range(3):
            with self.assertRaises(gstab.Error) as caught:
                torch_attach(rank, 3, ["a" * 32, lost, "a" * 32])
            self.assertEqual(caught.exception.code, 14)
            self.assertIn("rank 1 could not ask its gstabd which it is, so no worker of the job "
                          "attached: no gstabd at unix:", str(caught.exception))

    def test_with_a_gstabd_of_an_earlier_release_torchruns_variables_or_the_hosts_decide(self):
        self.torchrun(1, 2, 1)
        self.assertEqual(layout(torch_attach(3, 4, hosts=["h"] * 4)), (1, 2, 1, 2))
        del os.environ["LOCAL_WORLD_SIZE"]
        # srun, mpirun or a launcher of one's own: the ranks on this host are this node's.
        for hosts, rank, expected in [(["n1", "n2", "n1", "n2"], 3, (1, 2, 1, 2)),
                                      (["n2", "n2", "n1", "n1"], 2, (0, 2, 1, 2)),
                                      (["n1", "n1", "n1"], 1, (1, 3, 0, 1))]:
            self.assertEqual(layout(torch_attach(rank, len(hosts), hosts=hosts)), expected, hosts)
        # One new gstabd among old ones changes nothing: the instances are not all known.
        self.assertEqual(layout(torch_attach(1, 2, [None, "a" * 32], ["n1", "n1"])),
                         (1, 2, 0, 1))

    def test_the_ranks_given_are_kept_or_must_be_the_ones_found(self):
        # Rank 3 of 4, two a node: local rank 1 of node 1, no gstabd asked.
        client = torch_attach(3, 4, [gstab.Error(14, "not asked")] * 4, local_world_size=2)
        self.assertEqual(layout(client), (1, 2, 1, 2))
        self.assertIsNone(client.node_ranks)
        # Consecutive ranks also under torchrun's variables of another layout (one pod a GPU,
        # each pod a torchrun node of its own).
        self.torchrun(0, 1, 3)
        self.assertEqual(layout(torch_attach(3, 4, local_world_size=2)), (1, 2, 1, 2))
        # Given alone, they must be the ones found: two pods that each pass LOCAL_RANK=0 to one
        # gstabd would take each other's place at every attach. Every rank refuses alike.
        instances = ["a" * 32] * 2
        self.assertEqual(layout(torch_attach(1, 2, instances, local_rank=1)), (1, 2, 0, 1))
        for rank in (0, 1):
            with self.assertRaisesRegex(ValueError, "rank 1 gave local_rank=0, but the ranks "
                                        "that reach its gstabd make it local_rank 1"):
                torch_attach(rank, 2, instances, given=[(0, None), (0, None)],
                             local_rank=0 if rank else None)
        with self.assertRaisesRegex(ValueError, "rank 0 gave node_rank=1"):
            torch_attach(0, 2, instances, node_rank=1)
        # Without torch.distributed: the local ranks given, not dropped.
        asked = torch_attach(None, None, local_rank=1, local_world_size=2).asked
        self.assertEqual((asked["local_rank"], asked["local_world_size"]), (1, 2))
        with self.assertRaisesRegex(ValueError, "needs torch.distributed initialized"):
            torch_attach(None, None, node_rank=1)
        # A launcher's processes attaching before init_process_group would all be one worker.
        os.environ["WORLD_SIZE"] = "8"
        with self.assertRaisesRegex(ValueError, "WORLD_SIZE is 8 .* call gstab.torch.attach "
                                    "after torch.distributed.init_process_group"):
            torch_attach(None, None)
        with self.assertRaisesRegex(ValueError, "WORLD_SIZE is 8"):
            torch_attach(None, None, local_rank=1)  # every process local world size 1
        asked = torch_attach(None, None, local_rank=1, local_world_size=2).asked
        self.assertEqual((asked["local_rank"], asked["local_world_size"]), (1, 2))
        os.environ["WORLD_SIZE"] = "1"
        self.assertEqual(torch_attach(None, None).asked["local_world_size"], 1)

    def test_an_hsdp_mesh_must_have_gstabs_nodes_for_rows(self):
        # The nodes found are kept: an HSDP mesh whose rows are consecutive ranks is refused
        # where a gstabd's ranks are not (two pods of each Kubernetes node, placed 0 2 / 1 3):
        # registered node-sharded, each node would sum one shard twice and miss the other.
        from gstab._torch_layouts import _sharing
        from torch.distributed.tensor import Replicate, Shard
        client = torch_attach(2, 4, ["a" * 32, "b" * 32, "a" * 32, "b" * 32])
        self.assertEqual(client.node_ranks, [[0, 2], [1, 3]])
        client.local_world_size, client.node_count = 2, 2

        class Mesh:
            def __init__(self, rows):
                self.mesh, self.ndim = torch.tensor(rows), 2

            def size(self):
                return 4

        class FakeDTensor:
            def __init__(self, rows):
                self.device_mesh, self.placements = Mesh(rows), (Replicate(), Shard(0))
        with mock.patch("gstab._torch_layouts._dtensor_type", return_value=FakeDTensor), \
                mock.patch.object(torch.distributed, "is_initialized", return_value=True), \
                mock.patch.object(torch.distributed, "get_world_size", return_value=4):
            self.assertEqual(_sharing("w", FakeDTensor([[1, 3], [2, 0]]), False, client),
                             (False, True))
            with self.assertRaisesRegex(ValueError, "HSDP's 2-D mesh whose rows"):
                _sharing("w", FakeDTensor([[0, 1], [2, 3]]), False, client)
            client.node_ranks = None  # a layout given by hand: consecutive ranks a node
            self.assertEqual(_sharing("w", FakeDTensor([[0, 1], [2, 3]]), False, client),
                             (False, True))


def jax_row(answer, local_rank=None):
    """A process's answer to the gathering, as gstab.jax packs it: int32s of a state, a status
    code, the local_rank given (-1: none) and the instance's 32 characters."""
    row = np.zeros(35, np.int32)
    row[2] = -1 if local_rank is None else local_rank
    if isinstance(answer, gstab.Error):
        row[:2] = (2, answer.code)
    elif answer is None:
        row[0] = 1
    else:
        row[3:] = np.frombuffer(answer.encode(), np.uint8)
    return row


def jax_attach(process, answers, given=None, **kwargs):
    """The client gstab.jax.attach used as process `process` of len(answers), each process's
    gstabd answering as Recorder does, the others' local_rank given `given`, JAX's collectives
    faked (this process's row in the gathering is the one it packed)."""
    from jax.experimental import multihost_utils
    client = Recorder(answers[process])
    given = given or [None] * len(answers)

    def gather(mine):
        if len(mine) == 2:  # the local_rank check: each process's local rank, and its place
            per_node = kwargs.get("local_world_size") or 1
            rows = [np.array([p % per_node if g is None else g, p % per_node], np.int32)
                    for p, g in enumerate(given)]
        else:
            rows = [jax_row(a, g) for a, g in zip(answers, given)]
        rows[process] = mine
        return np.stack(rows)
    with mock.patch("jax.process_index", return_value=process), \
            mock.patch("jax.process_count", return_value=len(answers)), \
            mock.patch.object(multihost_utils, "process_allgather", side_effect=gather), \
            mock.patch.object(multihost_utils, "broadcast_one_to_all",
                              side_effect=lambda x: np.frombuffer(b"blob", np.uint8)
                              if np.ndim(x) else np.array(4, np.int32)):
        gstab.jax.attach(client, "job", **kwargs)
    return client


class JaxAttachTest(unittest.TestCase):
    def test_the_processes_of_one_gstabd_are_one_node(self):
        a, b = "0a" * 16, "0b" * 16
        client = jax_attach(2, [a, b, b, a])
        self.assertEqual(layout(client), (1, 2, 1, 2))
        self.assertEqual(client.node_ranks, [[0, 3], [1, 2]])
        self.assertEqual((client.rendezvous_nodes, client.asked["rendezvous"]), (None, b"blob"))
        self.assertEqual(jax_attach(0, [a, b, b, a]).rendezvous_nodes, 2)
        # One gstabd for all: one node, no rendezvous.
        client = jax_attach(1, [a, a])
        self.assertEqual(layout(client), (1, 2, 0, 1))
        self.assertEqual((client.rendezvous_nodes, client.asked["rendezvous"]), (None, None))

    def test_a_gstabd_of_an_earlier_release_makes_each_process_a_node(self):
        client = jax_attach(1, ["0a" * 16, None])
        self.assertEqual(layout(client), (0, 1, 1, 2))
        self.assertIsNone(client.node_ranks)

    def test_a_process_whose_gstabd_cannot_be_asked_fails_every_processs_attach(self):
        for process in (0, 1):
            with self.assertRaisesRegex(gstab.Error, "UNAVAILABLE" if process else
                                        "process 1 could not ask its gstabd"):
                jax_attach(process, ["0a" * 16, gstab.Error(14, "no gstabd")])

    def test_the_local_rank_given_is_kept_or_must_be_the_one_found(self):
        client = jax_attach(3, [gstab.Error(14, "not asked")] * 4, local_world_size=2)
        self.assertEqual(layout(client), (1, 2, 1, 2))
        a = "0a" * 16
        self.assertEqual(layout(jax_attach(1, [a, a], local_rank=1)), (1, 2, 0, 1))
        for process in (0, 1):
            with self.assertRaisesRegex(ValueError, "process 1 gave local_rank=0"):
                jax_attach(process, [a, a], given=[0, 0], local_rank=0)
        # Not found from the gstabds: consecutive processes a node, refused before attaching on
        # every process (it reached gstabd, or hung the others at their first step).
        with self.assertRaisesRegex(ValueError, "local_rank 1 is not process 0's"):
            jax_attach(0, [a], local_rank=1)
        with self.assertRaisesRegex(ValueError, "local_rank 0 is not process 3's"):
            jax_attach(3, [a] * 4, local_rank=0, local_world_size=2)
        # ... and on the other processes too, which would otherwise wait for it; so is one that
        # is no local rank at all.
        with self.assertRaisesRegex(ValueError, "local_rank 1 is not process 1's"):
            jax_attach(0, [a, a], given=[None, 1], local_world_size=1)
        for bad in (1.5, 2**31):
            with self.assertRaisesRegex(ValueError, "process 1's local_rank is not an int"):
                jax_attach(1, [a, a], local_rank=bad, local_world_size=1)
        with self.assertRaisesRegex(ValueError, "process 1's local_rank is not an int"):
            jax_attach(0, [a, a], given=[None, -1], local_world_size=1)
        # Also when found from the gstabds (local_world_size not given).
        for bad in (1.5, 2**31, -1):
            with self.assertRaisesRegex(ValueError, "process 1's local_rank is not an int"):
                jax_attach(1, [a, a], local_rank=bad)
        with self.assertRaisesRegex(ValueError, "process 1's local_rank is not an int"):
            jax_attach(0, [a, a], given=[None, -2])
        for process in (0, 1):
            with self.assertRaisesRegex(ValueError, "process 1 gave local_rank=1, but with a "
                                        "gstabd of an earlier release"):
                jax_attach(process, [None, None], given=[None, 1],
                           local_rank=1 if process else None)


if __name__ == "__main__":
    frameworks.main()
