"""gstab.jax in one process: real JAX trees' gradients through a real gstabd (CPU backend).

    jax_test.py --gstabd PATH --library PATH     # with JAX installed (scripts/setup-frameworks)

gstab.torch is frameworks_test.py's; processes of jax.distributed are distributed_test.py's.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import frameworks
import gstab
import gstab.jax
from frameworks import EXAMPLES, SPIKE_STEP, GstabdTest


def jax_params(dtype=jnp.float32):
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    return {"dense": {"kernel": jax.random.normal(k1, (8, 32), dtype) * 0.3,
                      "bias": jnp.zeros((32,), dtype)},
            "out": [jax.random.normal(k2, (32, 1), dtype) * 0.3, jnp.zeros((1,), dtype)]}


def jax_loss(params, x, y):
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    out = h @ params["out"][0] + params["out"][1]
    return jnp.mean((out.astype(jnp.float32) - y) ** 2)


def tree_norm(tree):
    return math.sqrt(sum(float(np.sum(np.asarray(leaf, dtype=np.float64) ** 2))
                         for leaf in jax.tree_util.tree_leaves(tree)))


class JaxTest(GstabdTest):
    def batch(self, dtype=jnp.float32):
        x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
        return x.astype(dtype), jnp.sin(x.sum(1, keepdims=True))

    def test_a_jitted_gradient_tree_rides_out_a_spike(self):
        params = jax_params()
        stabilizer = gstab.jax.Stabilizer(self.attach("jax-mlp"), params)
        grad_fn = jax.jit(jax.grad(lambda p, x, y, k: jax_loss(p, x, y) * k))
        x, y = self.batch()
        first = first_values = None
        for step in range(1, SPIKE_STEP + 1):
            raw = grad_fn(params, x, y, 1e4 if step == SPIKE_STEP else 1.0)
            grads, result = stabilizer.step(raw, step)
            if step == 1:
                first = jax.tree_util.tree_leaves(grads)
                first_values = [np.array(leaf) for leaf in first]
            group = result.groups[0]
            self.assertEqual(group.group, "model")
            self.assertAlmostEqual(group.norm / tree_norm(raw), 1.0, delta=1e-5)
            for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(raw)):
                self.assertIsInstance(a, jax.Array)
                np.testing.assert_allclose(a, np.asarray(b) * group.scale, rtol=1e-5)
            params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
        self.assertTrue(group.spike)
        self.assertLess(group.scale, 1e-2)
        self.assertTrue(math.isfinite(float(jax_loss(params, x, y))))
        # Step 1's arrays are its own: later steps rewrote the shared memory, not them.
        for leaf, values in zip(first, first_values):
            np.testing.assert_array_equal(leaf, values)

    def test_the_example_rides_out_spikes_that_wreck_it_without_gstab(self):
        example, env = os.path.join(EXAMPLES, "jax_train.py"), frameworks.example_env()
        reports = {}
        with tempfile.TemporaryDirectory(prefix="gstab-jax-") as folder:
            for mode in ("gstab", "no_gstab"):
                report = os.path.join(folder, mode + ".json")
                run = subprocess.run(
                    [sys.executable, example, "--socket", self.gstabd.socket, "--report", report]
                    + (["--no_gstab"] if mode == "no_gstab" else []),
                    capture_output=True, text=True, env=env, timeout=120)
                self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
                with open(report) as f:
                    reports[mode] = json.load(f)
        spikes = [r["step"] for r in reports["gstab"]["steps"] if r["spike"]]
        self.assertEqual(spikes, [30, 45])
        self.assertLess(reports["gstab"]["final_loss"], reports["gstab"]["steps"][0]["loss"])
        self.assertGreater(reports["no_gstab"]["final_loss"],
                           1000 * reports["gstab"]["final_loss"])

    def test_bfloat16_leaves_named_by_their_paths(self):
        params = jax_params(jnp.bfloat16)
        stabilizer = gstab.jax.Stabilizer(self.attach("jax-bf16"), params, group="")
        x, y = self.batch(jnp.bfloat16)
        raw = jax.grad(jax_loss)(params, x, y)
        grads, result = stabilizer.step(raw, 1)
        self.assertEqual(sorted(g.group for g in result.groups),
                         ["dense/bias", "dense/kernel", "out/0", "out/1"])
        self.assertEqual(jax.tree_util.tree_leaves(grads)[0].dtype, jnp.bfloat16)
        leaves = dict(zip(["dense/bias", "dense/kernel", "out/0", "out/1"],
                          jax.tree_util.tree_leaves(raw)))
        for g in result.groups:
            self.assertAlmostEqual(g.norm / tree_norm(leaves[g.group]), 1.0, delta=1e-5)

    def test_a_run_resumed_under_other_group_names_is_warned_of(self):
        params = jax_params()
        stabilizer = gstab.jax.Stabilizer(self.attach("jax-saved"), params, group="")
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        for step in range(1, 4):
            stabilizer.step(grads, step)
        saved = stabilizer._client.export_state()
        # The same names: the statistics are taken up, and nothing is said.
        same = self.attach("jax-resumed")
        same.import_state(saved)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gstab.jax.Stabilizer(same, params, group="")
        # Other names (here `group=`; a renamed module does the same): said.
        other = self.attach("jax-renamed")
        other.import_state(saved)
        with self.assertWarnsRegex(UserWarning, "4 groups this Stabilizer does not register "
                                   "\\(first 'dense/bias'\\), and 1 of its groups have none "
                                   "\\(first 'model'\\)"):
            gstab.jax.Stabilizer(other, params)
        # And the other way: saved under one group, resumed with the leaves' own (group="").
        one = gstab.jax.Stabilizer(self.attach("jax-one-group"), params)
        one.step(grads, 1)
        leaves = self.attach("jax-leaves")
        leaves.import_state(one._client.export_state())
        with self.assertWarnsRegex(UserWarning, "1 groups this Stabilizer does not register "
                                   "\\(first 'model'\\), and 4 of its groups have none "
                                   "\\(first 'dense/bias'\\)"):
            gstab.jax.Stabilizer(leaves, params, group="")

    def test_non_finite_gradients_skip_the_step(self):
        params = jax_params()
        stabilizer = gstab.jax.Stabilizer(self.attach("jax-nan"), params)
        raw = jax.tree_util.tree_map(jnp.ones_like, params)
        raw["out"][1] = jnp.array([jnp.nan])
        grads, result = stabilizer.step(raw, 1)
        self.assertTrue(result.skip)
        self.assertEqual(tree_norm(grads), 0.0)

    def test_trees_that_do_not_match_are_refused_saying_why(self):
        client = self.attach("jax-bad")
        with self.assertRaisesRegex(ValueError, "leaf 'step': .*not int32"):
            gstab.jax.Stabilizer(client, {"step": jnp.zeros((), jnp.int32)})
        stabilizer = gstab.jax.Stabilizer(client, jax_params())
        grads = jax_params()
        del grads["out"]
        with self.assertRaisesRegex(ValueError, r"lacks the registered leaf \['out'\]"):
            stabilizer.step(grads, 1)
        grads = dict(jax_params(), extra=jnp.ones(2))
        with self.assertRaisesRegex(ValueError, r"has a leaf \['extra'\] that was not registered"):
            stabilizer.step(grads, 1)
        with self.assertRaisesRegex(TypeError, "outside jax.jit"):
            jax.jit(lambda g: stabilizer.step(g, 1)[0])(jax_params())
        grads = jax_params()
        grads["dense"]["bias"] = jnp.zeros((31,))
        with self.assertRaisesRegex(ValueError, r"leaf 'dense/bias' is float32\[31\], "
                                                r"registered as float32\[32\]"):
            stabilizer.step(grads, 1)
        _, result = stabilizer.step(jax_params(), 1)  # still serving
        self.assertFalse(result.skip)
        with self.assertRaisesRegex(ValueError, "every leaf is empty"):
            gstab.jax.Stabilizer(client, {"none": jnp.zeros((0, 4))})
        # A Python float leaf is float32 to JAX, as its gradient is.
        floats = gstab.jax.Stabilizer(client, {"w": jnp.ones(3), "temp": 1.0})
        grads = jax.grad(lambda p: jnp.sum(p["w"] * p["temp"]))({"w": jnp.ones(3), "temp": 1.0})
        self.assertFalse(floats.step(grads, 2)[1].skip)
        later = gstab.jax.Stabilizer(client, {"w": np.ones(3, np.float32)})
        with self.assertRaisesRegex(RuntimeError, "no longer registered"):
            stabilizer.step(jax_params(), 3)
        self.assertFalse(later.step({"w": np.ones(3, np.float32)}, 3)[1].skip)
        # A group whose first leaf is empty here (a process's slice) is registered all the same,
        # as a one-element zero placeholder: every process names the same groups, in one order.
        sliced = {"a": jnp.zeros((0, 4)), "b": jnp.ones(3)}
        out, result = gstab.jax.Stabilizer(client, sliced, group="").step(sliced, 4)
        self.assertEqual([g.group for g in result.groups if g.group in ("a", "b")], ["a", "b"])
        self.assertEqual(out["a"].shape, (0, 4))

    def test_numpy_leaves_of_the_other_byte_order_keep_their_values(self):
        # Read into the arena's native float32 and returned in it; viewed in the leaf's own
        # order, the values came back byte-swapped.
        client = self.attach("jax-byte-order", policy="monitor")
        stabilizer = gstab.jax.Stabilizer(client, {"w": np.ones(3, ">f4")})
        grads, result = stabilizer.step({"w": np.array([1.5, 2.0, 3.0], ">f4")}, 1)
        np.testing.assert_array_equal(grads["w"], [1.5, 2.0, 3.0])
        self.assertAlmostEqual(result.groups[0].norm, math.sqrt(1.5 ** 2 + 4 + 9), places=5)

if __name__ == "__main__":
    frameworks.main()
