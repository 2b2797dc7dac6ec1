"""gstab.torch in one process: real models' gradients through a real gstabd (CPU backend).

    frameworks_test.py --gstabd PATH --library PATH     # with PyTorch and JAX installed
                                                        # (scripts/setup-frameworks)

gstab.jax is jax_test.py's; a model on a GPU is torch_cuda_test.py's; jobs of several
processes are distributed_test.py's.
"""
import io
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import frameworks
import gstab
import gstab.jax
import gstab.torch
from frameworks import SPIKE_STEP, GstabdTest, mlp, regression_batch, torch_norm
from gstabd import Gstabd


class TorchTest(GstabdTest):
    def test_a_model_rides_out_a_spike_its_gradients_stabilized_in_place(self):
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-mlp"), model)
        params = list(model.parameters())
        addresses = [p.grad.data_ptr() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.05)
        x, y = regression_batch(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # gradients stay in place: nothing is copied
            for step in range(1, SPIKE_STEP + 1):
                loss = F.mse_loss(model(x), y)
                (loss * (1e4 if step == SPIKE_STEP else 1.0)).backward()
                raw = [p.grad.clone() for p in params]
                result = stabilizer.step(step)
                self.assertEqual([p.grad.data_ptr() for p in params], addresses)
                self.assertEqual([g.group for g in result.groups], ["model"])
                group = result.groups[0]
                self.assertAlmostEqual(group.norm / torch_norm(raw), 1.0, delta=1e-5)
                for p, before in zip(params, raw):  # direction kept, magnitude replaced
                    torch.testing.assert_close(p.grad, before * group.scale, rtol=1e-5,
                                               atol=1e-30)
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
        self.assertTrue(group.spike)
        self.assertLess(group.scale, 1e-2)
        after = F.mse_loss(model(x), y).item()
        self.assertLess(after, 1.5 * loss.item(), "the spike step did not wreck the model")

    def test_state_dict_goes_through_torch_save_and_a_bad_one_changes_nothing(self):
        model = mlp()
        client = self.attach("torch-state")
        stabilizer = gstab.torch.Stabilizer(client, model)
        x, y = regression_batch(1)

        def scales(steps):  # the same model each step, its loss weighted by the step
            out = []
            for step in steps:
                (F.mse_loss(model(x), y) * (1 + step % 4)).backward()
                out.append(stabilizer.step(step).groups[0].scale)
                stabilizer.zero_grad()
            return out

        scales(range(1, 11))
        checkpoint = io.BytesIO()
        torch.save({"gstab": stabilizer.state_dict()}, checkpoint)
        later = scales(range(11, 21))
        checkpoint.seek(0)
        saved = torch.load(checkpoint, weights_only=True)["gstab"]
        for bad, error in [({"gstab_state": "text"}, ValueError), ({}, ValueError),
                           ({"gstab_state": b"\x07junk"}, gstab.Error)]:
            with self.assertRaises(error):
                stabilizer.load_state_dict(bad)
        # A bad group name is refused before the state is imported.
        with self.assertRaisesRegex(ValueError, "parameter '0.weight': group 'a b'"):
            gstab.torch.Stabilizer(client, model, group="a b", state=saved)
        self.assertEqual(client.stats()["last_step"], 20)  # the refused ones changed nothing
        stabilizer.load_state_dict(saved)  # back to step 10: the same scales again
        self.assertEqual(client.stats()["last_step"], 10)
        self.assertEqual(scales(range(11, 21)), later)
        # Resumed under other group names (here `group=`; wrappers change parameter names):
        # the saved statistics would go unused, which is said.
        other = self.attach("torch-state-renamed")
        with self.assertWarnsRegex(UserWarning, "does not register \\(first 'model'\\)"):
            gstab.torch.Stabilizer(other, model, group="renamed", state=saved)
        # So is a run resumed by an import before the Stabilizer (or gstabd's checkpoint).
        imported = self.attach("torch-state-imported")
        imported.import_state(saved["gstab_state"])
        with self.assertWarnsRegex(UserWarning, "does not register \\(first 'model'\\)"):
            gstab.torch.Stabilizer(imported, model, group="renamed")
        # A job of several workers imports on one of them: without a process group to order
        # the others after it, `state` is refused, saying what to do.
        pair = gstab.Client(self.gstabd.socket)
        self.addCleanup(pair.close)
        pair.attach("torch-state-pair", world_size=2, local_world_size=2)
        with self.assertRaisesRegex(ValueError, "the job has 2 workers and no torch.distributed"):
            gstab.torch.Stabilizer(pair, model, state=saved)

    def test_ddps_named_parameters_taken_for_shards_are_warned_of(self):
        # DDP's named_parameters() (every name 'module.'), whole on each of 2 ranks: summed as
        # shards unless said otherwise.
        pair = gstab.Client(self.gstabd.socket)
        self.addCleanup(pair.close)
        pair.attach("torch-ddp-names", world_size=2, local_world_size=2)
        model = mlp()
        named = [("module." + n, p) for n, p in model.named_parameters()]
        with self.assertWarnsRegex(UserWarning, "pass the DDP module itself or replicated=True"):
            gstab.torch.Stabilizer(pair, named)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gstab.torch.Stabilizer(pair, named, replicated=False)
            gstab.torch.Stabilizer(pair, model.named_parameters())
            gstab.torch.Stabilizer(self.attach("torch-ddp-names-one"), named)  # one rank

    def test_replaced_and_missing_gradients_are_taken_back_with_one_warning(self):
        model = mlp()
        unused = torch.nn.Linear(4, 4)  # no gradient reaches it: its grad stays None
        named = list(model.named_parameters()) + [("unused." + n, p)
                                                  for n, p in unused.named_parameters()]
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-set-to-none"), named)
        registered = [g.data_ptr() for g in stabilizer.gradients]
        optimizer = torch.optim.SGD([p for _, p in named], lr=0.05)
        x, y = regression_batch(2)
        for step in (1, 2):
            optimizer.zero_grad()  # set_to_none=True: backward makes new gradient tensors
            F.mse_loss(model(x), y).backward()
            raw = [p.grad.clone() for p in model.parameters()]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = stabilizer.step(step)
            self.assertEqual(len(caught), 1 if step == 1 else 0, [str(w.message) for w in caught])
            if caught:
                self.assertIn("set_to_none=False", str(caught[0].message))
            self.assertEqual([p.grad.data_ptr() for _, p in named], registered)
            self.assertAlmostEqual(result.groups[0].norm / torch_norm(raw), 1.0, delta=1e-5)
            self.assertTrue(all(p.grad.abs().sum() == 0 for p in unused.parameters()))
        stabilizer.zero_grad()
        self.assertEqual(torch_norm(stabilizer.gradients), 0.0)

    def test_a_parameter_under_two_names_counts_once(self):
        model = mlp()
        named = list(model.named_parameters()) + [("tied.weight", model[0].weight)]
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-tied"), named, group="")
        x, y = regression_batch(6)
        F.mse_loss(model(x), y).backward()
        raw = [p.grad.clone() for p in model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = stabilizer.step(1)
        self.assertEqual([g.group for g in result.groups], [n for n, _ in model.named_parameters()])
        for g, before in zip(result.groups, raw):
            self.assertAlmostEqual(g.norm / torch_norm([before]), 1.0, delta=1e-5)

    def test_groups_are_named_in_their_parameters_order_where_a_shard_is_empty(self):
        # FSDP2 leaves some ranks an empty shard of a small parameter: such a rank registers a
        # placeholder in place of a group's first parameter, so that every rank, and every node
        # of a job across nodes, names the groups first in the same order (gstabd lays a node's
        # groups out as its first registration names them).
        def spec(name, numel, group):
            return (name, numel, "float32", group, False, False)
        parameters = [("cls", 1, "A"), ("x", 3, "B"), ("w", 4, "A"), ("y", 2, "C")]
        placeholders = [spec(f"{n}:empty", 1, g) for n, _, g in parameters]
        whole = [spec(*p) for p in parameters]
        sharded = [None, whole[1], whole[2], None]  # cls and y have nothing on this rank
        for specs in (whole, sharded):
            registered = gstab.torch._in_group_order(specs, placeholders)
            self.assertEqual(list(dict.fromkeys(s[3] for s, _ in registered)), ["A", "B", "C"])
        self.assertEqual([(s[0], i) for s, i in gstab.torch._in_group_order(sharded, placeholders)],
                         [("cls:empty", None), ("x", 1), ("w", 2), ("y:empty", None)])

    def test_float32_gradients_of_bfloat16_parameters_set_by_grad_dtype(self):
        model = mlp(torch.bfloat16)
        for p in model.parameters():
            p.grad_dtype = torch.float32
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-grad-dtype"), model)
        params = list(model.parameters())
        addresses = [p.grad.data_ptr() for p in params]
        self.assertEqual({p.grad.dtype for p in params}, {torch.float32})
        x, y = regression_batch(3, torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # accumulated in place: nothing is copied
            F.mse_loss(model(x), y).backward()
            raw = [p.grad.clone() for p in params]
            group = stabilizer.step(1).groups[0]
        self.assertEqual([p.grad.data_ptr() for p in params], addresses)
        self.assertAlmostEqual(group.norm / torch_norm(raw), 1.0, delta=1e-5)
        for p, before in zip(params, raw):
            torch.testing.assert_close(p.grad, before * group.scale, rtol=1e-5, atol=1e-30)

    def test_bfloat16_parameters_in_groups_chosen_per_parameter(self):
        model = mlp(torch.bfloat16)
        stabilizer = gstab.torch.Stabilizer(
            self.attach("torch-bf16"), model,
            group=lambda name, p: "biases" if name.endswith("bias") else "weights")
        x, y = regression_batch(3, torch.bfloat16)
        F.mse_loss(model(x), y).backward()
        raw = {n: p.grad.clone() for n, p in model.named_parameters()}
        result = stabilizer.step(1)
        groups = {g.group: g for g in result.groups}
        self.assertEqual(sorted(groups), ["biases", "weights"])
        for name, p in model.named_parameters():
            group = groups["biases" if name.endswith("bias") else "weights"]
            members = [raw[n] for n in raw if n.endswith("bias") == name.endswith("bias")]
            self.assertAlmostEqual(group.norm / torch_norm(members), 1.0, delta=1e-5)
            self.assertEqual(p.grad.dtype, torch.bfloat16)
            torch.testing.assert_close(p.grad.float(), raw[name].float() * group.scale,
                                       rtol=1e-2, atol=0)

    def test_non_finite_gradients_skip_the_step(self):
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-nan"), model)
        with self.assertRaisesRegex(RuntimeError, "no step yet"):
            stabilizer.skipped()
        x, y = regression_batch(4)
        F.mse_loss(model(x), y).backward()
        model[0].weight.grad[3, 2] = float("inf")
        result = stabilizer.step(1)
        self.assertTrue(result.skip)
        self.assertTrue(stabilizer.skipped())
        self.assertEqual(torch_norm([p.grad for p in model.parameters()]), 0.0)
        F.mse_loss(model(x), y).backward()
        self.assertFalse(stabilizer.step(2).skip)
        self.assertFalse(stabilizer.skipped())
        # A step that raises (a step number already taken) leaves no stale decision behind.
        with self.assertRaises(gstab.Error):
            stabilizer.step(2)
        with self.assertRaisesRegex(RuntimeError, "the last one raised"):
            stabilizer.skipped()
        # So does one refused before it reaches gstabd (the trainable parameters changed).
        F.mse_loss(model(x), y).backward()
        self.assertFalse(stabilizer.step(3).skip)
        model[0].bias.requires_grad_(False)
        with self.assertRaisesRegex(RuntimeError, "first '0.bias', frozen"):
            stabilizer.step(4)
        with self.assertRaisesRegex(RuntimeError, "the last one raised"):
            stabilizer.skipped()

    def test_gradients_of_a_backward_with_create_graph_are_taken_as_values(self):
        # backward(create_graph=True) makes each gradient anew, carrying its graph. The
        # registered memory takes the values only: no graph is chained to it (it kept every
        # step's graph alive), and zero_grad(set_to_none=False) works (it refused the view).
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-create-graph"), model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = regression_batch(3)
        for step in range(1, 5):
            optimizer.zero_grad(set_to_none=step % 2 == 1)
            F.mse_loss(model(x), y).backward(create_graph=True)
            raw = [p.grad.detach().clone() for p in model.parameters()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the copy's warning is another test's
                result = stabilizer.step(step)
            self.assertAlmostEqual(result.groups[0].norm / torch_norm(raw), 1.0, delta=1e-5)
            for p in model.parameters():
                self.assertIsNone(p.grad.grad_fn)
                self.assertFalse(p.grad.requires_grad)
            optimizer.step()

    def test_a_state_that_replaces_the_attached_policy_is_warned_of_or_kept_out(self):
        client = self.attach("torch-state-source", policy="monitor")
        saved = gstab.torch.Stabilizer(client, mlp()).state_dict()
        for keep in (False, True):
            client = self.attach(f"torch-state-{keep}", policy="clip",
                                 config={"clip.max_norm": 0.01})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gstab.torch.Stabilizer(client, mlp(), state=saved, keep_config=keep)
            replaced = [w for w in caught if "replaced the one attach() was given" in
                        str(w.message)]
            self.assertEqual(len(replaced), 0 if keep else 1, keep)
            self.assertEqual(client.stats()["config"]["policy"],
                             "POLICY_CLIP" if keep else "POLICY_MONITOR")

    def test_a_gstabd_restart_mid_training_goes_unnoticed(self):
        x, y = regression_batch(7)

        def train(client, steps, restart=None):
            model = mlp()
            stabilizer = gstab.torch.Stabilizer(client, model)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            scales = []
            for step in range(1, steps + 1):
                if step == restart:
                    self.assertEqual(node.restart(), 0)
                (F.mse_loss(model(x), y) * (1e4 if step == SPIKE_STEP else 1.0)).backward()
                scales.append(stabilizer.step(step).groups[0].scale)
                optimizer.step()
                stabilizer.zero_grad()
            return scales, [p.detach().clone() for p in model.parameters()]

        reference = train(self.attach("torch-restart-ref"), SPIKE_STEP)
        node = Gstabd(frameworks.ARGS.gstabd, library_path=frameworks.ARGS.gstabd_library_path)
        try:
            client = gstab.Client(node.socket)
            client.attach("torch-restart", policy="stabilize")
            with self.assertLogs("gstab", "WARNING"):
                scales, weights = train(client, SPIKE_STEP, restart=20)
        finally:
            self.assertEqual(node.stop(), 0)
        self.assertEqual(client.reattached, 1)
        self.assertEqual(scales, reference[0])
        for a, b in zip(weights, reference[1]):
            self.assertTrue(torch.equal(a, b))

    def test_mixed_precision_with_a_grad_scaler_unscaled_before_the_step(self):
        # The advice of docs/daemon.md: unscale_ before gstab's step, so its norms are the
        # gradients' own. Overflows are skipped by both, and the scaler backs off: one put
        # there by hand, and the 1e4 spike, which under a loss scale of 2^15 overflows fp16.
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-amp"), model)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1000)
        x, y = regression_batch(6)
        injected = 20
        for step in range(1, SPIKE_STEP + 1):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.mse_loss(model(x), y) * (1e4 if step == SPIKE_STEP else 1.0)
            scaler.scale(loss).backward()
            if step == injected:
                params[0].grad[0, 0] = float("inf")
            scaler.unscale_(optimizer)
            raw = [p.grad.clone() for p in params]
            before = [p.detach().clone() for p in params]
            scale_before = scaler.get_scale()
            result = stabilizer.step(step)
            # gstab may skip a step the scaler would take (a voided or lost step); update() backs
            # off all the same, from the inf unscale_ found.
            if not result.skip:
                scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=False)
            overflow = step in (injected, SPIKE_STEP)
            self.assertEqual(result.skip, overflow, f"step {step}")
            self.assertEqual(scaler.get_scale(), scale_before / 2 if overflow else scale_before)
            if overflow:
                for p, b in zip(params, before):
                    self.assertTrue(torch.equal(p.detach(), b))
            else:  # the unscaled gradients' norm, not 2^16 times it
                self.assertAlmostEqual(result.groups[0].norm / torch_norm(raw), 1.0, delta=1e-5)
        self.assertTrue(all(torch.isfinite(p).all() for p in params))

    def test_a_later_registration_on_the_client_retires_the_earlier_stabilizer(self):
        client = self.attach("torch-twice")
        model = mlp()
        first = gstab.torch.Stabilizer(client, model)
        model[0].requires_grad_(False)  # say, layers frozen: registered again
        second = gstab.torch.Stabilizer(client, model)
        with self.assertRaisesRegex(RuntimeError, "no longer registered"):
            first.step(1)
        x, y = regression_batch(7)
        F.mse_loss(model(x), y).backward()
        raw = torch_norm([model[2].weight.grad, model[2].bias.grad])  # the trainable ones
        self.assertAlmostEqual(second.step(1).groups[0].norm / raw, 1.0, delta=1e-5)

    def test_attaching_again_retires_the_stabilizer_and_a_new_one_steps_on(self):
        client = self.attach("torch-reattach")
        model = mlp()
        first = gstab.torch.Stabilizer(client, model)
        x, y = regression_batch(7)
        F.mse_loss(model(x), y).backward()
        self.assertFalse(first.step(1).skip)
        client.attach("torch-reattach")  # say, after a failure gstab cannot recover by itself
        with self.assertRaisesRegex(RuntimeError, "attached again.*make a new Stabilizer"):
            first.step(2)
        second = gstab.torch.Stabilizer(client, model)
        model.zero_grad(set_to_none=False)
        F.mse_loss(model(x), y).backward()
        raw = torch_norm([p.grad for p in model.parameters()])
        self.assertAlmostEqual(second.step(2).groups[0].norm / raw, 1.0, delta=1e-5)

    def test_gradients_keep_their_parameters_memory_layout(self):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
        stabilizer = gstab.torch.Stabilizer(self.attach("torch-layout"), conv)
        self.assertEqual(conv.weight.grad.stride(), conv.weight.stride())
        self.assertNotEqual(conv.weight.stride(), conv.weight.contiguous().stride())
        x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # AccumulateGrad warns of a grad of another layout
            conv(x).square().mean().backward()
            raw = [p.grad.clone() for p in conv.parameters()]
            result = stabilizer.step(1)
        self.assertAlmostEqual(result.groups[0].norm / torch_norm(raw), 1.0, delta=1e-5)

    def test_models_gstab_cannot_serve_are_refused_saying_why(self):
        client = self.attach("torch-bad")
        with self.assertRaisesRegex(TypeError, r"model.parameters\(\) gives no names"):
            gstab.torch.Stabilizer(client, mlp().parameters())
        with self.assertRaisesRegex(TypeError, "group= takes a str"):
            gstab.torch.Stabilizer(client, mlp(), group=5)
        with self.assertRaisesRegex(TypeError, "takes a gstab.Client first"):
            gstab.torch.Stabilizer(self.gstabd.socket, mlp())
        with self.assertRaisesRegex(TypeError, "job name must be a str, not int"):
            client.attach(5)
        with self.assertRaisesRegex(ValueError, r"parameter '0.weight'.*not float64"):
            gstab.torch.Stabilizer(client, mlp(torch.float64))
        frozen = mlp().requires_grad_(False)
        with self.assertRaisesRegex(ValueError, "no parameter requires a gradient"):
            gstab.torch.Stabilizer(client, frozen)
        with self.assertRaisesRegex(ValueError, "not on meta"):
            gstab.torch.Stabilizer(client, mlp().to("meta"))
        # Sparse gradients: refused at once for a module, at the step for bare parameters.
        embedding = torch.nn.Embedding(10, 4, sparse=True)
        with self.assertRaisesRegex(ValueError, "gradients of 'Embedding' are sparse"):
            gstab.torch.Stabilizer(client, embedding)
        loose = gstab.torch.Stabilizer(client, list(embedding.named_parameters()))
        embedding.zero_grad(set_to_none=True)
        embedding(torch.tensor([1, 2])).sum().backward()
        with self.assertRaisesRegex(ValueError, "gradients of 'weight' are sparse"):
            loose.step(1)
        with self.assertRaisesRegex(ValueError, "gradients of 'weight' are sparse"):  # at once
            gstab.torch.Stabilizer(client, list(embedding.named_parameters()))
        frozen_lookup = torch.nn.Sequential(torch.nn.Embedding(10, 4, sparse=True), mlp())
        frozen_lookup[0].requires_grad_(False)  # never has a gradient: no refusal
        gstab.torch.Stabilizer(client, frozen_lookup)
        mixer = mlp()
        mixer.sparse = True  # an attribute of that name on a module of another kind
        gstab.torch.Stabilizer(client, mixer)
        # A copy of a parameter (not a leaf) never has its .grad filled: gstab would see zeros
        # while the model's own gradients reached the optimizer unstabilized.
        with self.assertRaisesRegex(ValueError, "parameter '0.weight' is computed from another"):
            gstab.torch.Stabilizer(client, [(n, p.to(torch.bfloat16))
                                            for n, p in mlp().named_parameters()])
        with self.assertRaisesRegex(TypeError, "takes a gstab.Client first"):
            gstab.jax.Stabilizer(self.gstabd.socket, {"w": np.ones(3, np.float32)})
        import torch.distributed as dist
        from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
        with tempfile.TemporaryDirectory() as folder:
            dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0,
                                    world_size=1)
            try:  # sharded along both dimensions of a 2-D mesh: no one sum serves it
                hybrid = torch.nn.Parameter(distribute_tensor(
                    torch.ones(4, 4), init_device_mesh("cpu", (1, 1)), [Shard(0), Shard(1)]))
                with self.assertRaisesRegex(ValueError, "parameter 'w' is a DTensor on a 2-D"):
                    gstab.torch.Stabilizer(client, [("w", hybrid)])
                # A job of two workers in a default group that is not them (its other ranks
                # evaluators, say): the import's wait on that group would never end.
                pair = gstab.Client(self.gstabd.socket)
                self.addCleanup(pair.close)
                pair.attach("torch-group-pair", world_size=2, local_world_size=2)
                with self.assertRaisesRegex(ValueError, "process group has 1 ranks to order"):
                    gstab.torch.Stabilizer(pair, mlp(), state={"gstab_state": b"x"})
                # FSDP1 whose ranks hold whole gradients: each copy would count. (One rank's
                # FSDP1 shards nothing: NO_SHARD whatever it is asked, and served.)
                from unittest import mock
                from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
                copies = FullyShardedDataParallel(mlp(), device_id=torch.device("cpu"),
                                                  sharding_strategy=ShardingStrategy.NO_SHARD)
                # So do FULL_SHARD's over a group of fewer ranks than the job's (a hybrid
                # mesh's rows on one node, say): one copy per group. (FSDP1 of one rank took
                # NO_SHARD: the strategy it would have on more.)
                sharded_over_one = FullyShardedDataParallel(mlp(), device_id=torch.device("cpu"))
                with mock.patch.object(dist, "get_world_size", return_value=2), \
                        mock.patch.object(sharded_over_one, "sharding_strategy",
                                          ShardingStrategy.FULL_SHARD):
                    with self.assertRaisesRegex(ValueError, "with NO_SHARD: each rank holds"):
                        gstab.torch.Stabilizer(client, copies)
                    gstab.torch.Stabilizer(client, copies, replicated=True, group="copies")
                    with self.assertRaisesRegex(ValueError, "FULL_SHARD: each group of the 1 "
                                                "ranks it shards over \\(of the job's 2\\)"):
                        gstab.torch.Stabilizer(client, sharded_over_one)
                # DDP under torch.compile (an OptimizedModule around it) is still DDP's layout.
                compiled = torch.compile(torch.nn.parallel.DistributedDataParallel(mlp()))
                with mock.patch.object(gstab.torch, "_sharing",
                                       wraps=gstab.torch._sharing) as sharing:
                    gstab.torch.Stabilizer(client, compiled, group="compiled")
                self.assertTrue(sharing.call_args_list)
                self.assertTrue(all(call.args[2] for call in sharing.call_args_list))
                # DDP inside another module, on a job of two workers: whole on every rank too,
                # which the guess (the module given is no DDP) misses, and says so.
                wrapper = torch.nn.Module()
                wrapper.net = torch.nn.parallel.DistributedDataParallel(mlp())
                with self.assertWarnsRegex(UserWarning, "'net' is a DistributedDataParallel "
                                           "module inside the one given"):
                    gstab.torch.Stabilizer(pair, wrapper, group="wrapped")
                # FSDP2's model cast after its stabilizer was made: model.to() swaps the
                # contents of the DTensor gradient over the registered memory, which stays.
                from torch.distributed.fsdp import fully_shard
                sharded = mlp()
                fully_shard(sharded)
                sharded_stabilizer = gstab.torch.Stabilizer(client, sharded, group="sharded")
                sharded.to(torch.bfloat16)
                with self.assertRaisesRegex(RuntimeError, "gradient of '.*' was moved or cast"):
                    sharded_stabilizer.step(1)
            finally:
                dist.destroy_process_group()
        # A name gstabd would refuse, before anything is imported or allocated.
        with self.assertRaisesRegex(ValueError, "parameter name 'a weight'"):
            gstab.torch.Stabilizer(client, [("a weight", torch.nn.Parameter(torch.ones(3)))])
        # The client is still attached and serves a good model afterwards.
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(client, model)
        F.mse_loss(model(regression_batch(5)[0]), regression_batch(5)[1]).backward()
        self.assertFalse(stabilizer.step(1).skip)
        # A model cast after its stabilizer was made has gradients outside the registered
        # memory: refused, rather than stabilizing memory the model no longer uses.
        model.to(torch.bfloat16)
        with self.assertRaisesRegex(RuntimeError, "after its Stabilizer was made"):
            stabilizer.step(2)
        # So is one cast with no gradient set (zero_grad(set_to_none=True)): only its
        # parameters moved.
        model = mlp()
        stabilizer = gstab.torch.Stabilizer(client, model)
        model.zero_grad(set_to_none=True)
        model.to(torch.bfloat16)
        with self.assertRaisesRegex(RuntimeError, "parameter of '.*' was moved or cast"):
            stabilizer.step(1)
        # Parameters swapped (load_state_dict(assign=True), as after meta-device init) or
        # unfrozen since: their gradients are not the registered ones, and would go unstabilized.
        for change in ("swap", "unfreeze"):
            model = mlp()
            if change == "unfreeze":
                model[0].bias.requires_grad_(False)
            stabilizer = gstab.torch.Stabilizer(client, model)
            if change == "swap":
                model.load_state_dict(mlp().state_dict(), assign=True)
            else:
                model[0].bias.requires_grad_(True)
            with self.assertRaisesRegex(RuntimeError, "trainable parameters changed", msg=change):
                stabilizer.step(3)


if __name__ == "__main__":
    frameworks.main()
