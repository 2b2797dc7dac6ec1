"""gstab.torch with a model on a GPU: gradients in PyTorch's device memory, registered with a
gstabd on its CUDA backend over CUDA IPC and stabilized on the model's stream.

    torch_cuda_test.py --gstabd PATH --library PATH [--gstabd_library_path DIRS]

Skipped where PyTorch sees no CUDA GPU (ctest label gpu); scripts/gpu-check runs it on the GPU
machine.
"""

import os
import tempfile
import unittest
import warnings

import torch
import torch.nn.functional as F

import frameworks
import gstab
import gstab.torch
from frameworks import SPIKE_STEP, GstabdTest, mlp, regression_batch, torch_norm


# Skipped where PyTorch sees no GPU, unless GSTAB_REQUIRE_CUDA=1 (scripts/gpu-check): there a
# GPU that PyTorch cannot see fails the tests rather than passing them unrun.
@unittest.skipUnless(torch.cuda.is_available() or os.environ.get("GSTAB_REQUIRE_CUDA") == "1",
                     "PyTorch sees no CUDA GPU")
class TorchCudaTest(GstabdTest):
    """A model on the GPU: gradients in its own device memory, stabilized on its stream."""
    BACKEND = "cuda"

    def run_model(self, job, dtype, rtol):
        client = self.attach(job)
        model = mlp(dtype).cuda()
        stabilizer = gstab.torch.Stabilizer(client, model)
        params = list(model.parameters())
        addresses = [p.grad.data_ptr() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.05)
        x, y = (t.cuda() for t in regression_batch(1, dtype))
        for step in range(1, SPIKE_STEP + 1):
            (F.mse_loss(model(x), y) * (1e4 if step == SPIKE_STEP else 1.0)).backward()
            raw = [p.grad.clone() for p in params]
            result = stabilizer.step(step)  # the current stream waits for gstabd's kernels
            after = [p.grad.clone() for p in params]
            self.assertEqual([p.grad.data_ptr() for p in params], addresses)
            self.assertLessEqual(result.result_step, step)
            scale = torch_norm(after) / torch_norm(raw)  # one scale for the group: the same
            for a, r in zip(after, raw):                 # direction, every tensor alike
                torch.testing.assert_close(a.double(), r.double() * scale, rtol=rtol, atol=0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        self.assertLess(scale, 1e-2, "the 1e4x step's magnitude is replaced")
        torch.cuda.synchronize()
        self.assertTrue(all(torch.isfinite(p).all().item() for p in params))

    def test_a_gpu_model_rides_out_a_spike_on_its_stream(self):
        self.run_model("torch-cuda", torch.float32, 1e-5)

    def test_a_bfloat16_gpu_model(self):
        self.run_model("torch-cuda-bf16", torch.bfloat16, 1e-2)

    def test_replaced_channels_last_gradients_are_taken_back_on_the_steps_stream(self):
        client = self.attach("torch-cuda-layout")
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 8, 3).cuda().to(memory_format=torch.channels_last)
        stabilizer = gstab.torch.Stabilizer(client, conv)
        registered = [g.data_ptr() for g in stabilizer.gradients]
        self.assertEqual(conv.weight.grad.stride(), conv.weight.stride())
        x = torch.randn(2, 3, 8, 8, device="cuda").to(memory_format=torch.channels_last)
        side = torch.cuda.Stream()
        for step in (1, 2, 3):
            conv.zero_grad()  # set_to_none: backward makes new gradients
            conv(x).square().mean().backward()
            raw = [p.grad.clone() for p in conv.parameters()]
            side.wait_stream(torch.cuda.current_stream())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the one set_to_none warning
                stabilizer.step(step, stream=side)
            with torch.cuda.stream(side):
                after = [p.grad.clone() for p in conv.parameters()]
            torch.cuda.current_stream().wait_stream(side)
            self.assertEqual([p.grad.data_ptr() for p in conv.parameters()], registered)
            scale = torch_norm(after) / torch_norm(raw)
            for a, r in zip(after, raw):
                torch.testing.assert_close(a.double(), r.double() * scale, rtol=1e-5, atol=0)

    def test_this_steps_skip_decision_on_a_stream_of_the_callers(self):
        client = self.attach("torch-cuda-skip")
        model = mlp().cuda()
        stabilizer = gstab.torch.Stabilizer(client, model)
        x, y = (t.cuda() for t in regression_batch(2))
        side = torch.cuda.Stream()
        for step, poison in ((1, False), (2, True), (3, False)):
            F.mse_loss(model(x), y).backward()
            if poison:
                model[0].weight.grad[0, 0] = float("nan")
            optimizer_zero = torch.cuda.current_stream()
            side.wait_stream(optimizer_zero)
            stabilizer.step(step, stream=side)  # the caller's stream, not the current one
            with torch.cuda.stream(side):
                skipped = stabilizer.skipped()
                norm = torch.linalg.vector_norm(
                    torch.cat([p.grad.flatten() for p in model.parameters()]))
            torch.cuda.current_stream().wait_stream(side)
            self.assertEqual(bool(skipped), poison, f"step {step}")
            self.assertEqual(norm.item() == 0.0, poison, f"step {step}")
            stabilizer.zero_grad()
        # A forked child is told the gradients are not its own, where it had no groups named.
        names = stabilizer._cuda.group_names()
        self.assertTrue(names)
        pid = os.fork()
        if pid == 0:  # no CUDA call here: only the ownership check runs
            try:
                stabilizer._cuda.group_names()
                os._exit(2)
            except gstab.Error as e:
                os._exit(0 if "forked child" in e.message else 3)
            except BaseException:
                os._exit(4)
        self.assertEqual(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), 0)
        self.assertEqual(stabilizer._cuda.group_names(), names)

    def test_fsdp2_on_one_gpu_resumes_from_its_state(self):
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor
        x, y = (t.cuda() for t in regression_batch(3))

        def stabilizer_for(job, state=None):
            client = gstab.Client(self.gstabd.socket)
            self.addCleanup(client.close)
            gstab.torch.attach(client, job)  # a world of one: attached as rank 0 of 1
            model = mlp().cuda()
            fully_shard(model)
            stabilizer = gstab.torch.Stabilizer(client, model, state=state)
            for p, grad in zip(model.parameters(), stabilizer.gradients):
                self.assertIsInstance(p.grad, DTensor)
                self.assertEqual(p.grad.to_local().data_ptr(), grad.data_ptr())
            return model, stabilizer

        def scales(model, stabilizer, steps):  # the same model, its loss weighted by the step
            out = []
            for step in steps:
                (F.mse_loss(model(x), y) * (1 + step % 4)).backward()
                raw = torch_norm([p.grad.full_tensor() for p in model.parameters()])
                stabilizer.step(step)
                out.append(torch_norm([p.grad.full_tensor() for p in model.parameters()]) / raw)
                stabilizer.zero_grad()
            return out

        with tempfile.TemporaryDirectory() as folder:
            dist.init_process_group("nccl", init_method=f"file://{folder}/store", rank=0,
                                    world_size=1)
            try:
                model, stabilizer = stabilizer_for("torch-cuda-fsdp")
                scales(model, stabilizer, range(1, 11))
                state = stabilizer.state_dict()
                later = scales(model, stabilizer, range(11, 21))
                model, stabilizer = stabilizer_for("torch-cuda-fsdp-resumed", state)
                torch.testing.assert_close(scales(model, stabilizer, range(11, 21)), later,
                                           rtol=1e-6, atol=0)
                model, stabilizer = stabilizer_for("torch-cuda-fsdp-fresh")
                self.assertGreater(abs(scales(model, stabilizer, range(11, 12))[0] / later[0]
                                       - 1), 1e-3, "without the state the scales differ")
            finally:
                dist.destroy_process_group()


if __name__ == "__main__":
    frameworks.main()
