// The worker of cuda_e2e_test: a process with gradients in its own GPU memory that attaches to
// a real gstabd (--backend=cuda) through the client library.
//   cuda_e2e_worker SOCKET JOB check      3 steps, every value against the CPU rule, and the
//                                         results buffer gstabd writes before `done`
//   cuda_e2e_worker SOCKET JOB loop N     N steps of 1M elements; prints the device's free
//                                         memory after 100 steps and after N
//   cuda_e2e_worker SOCKET JOB forever    steps until killed ("STEPPING" after the first)
//   cuda_e2e_worker SOCKET JOB held FLAG  one step whose ready write its stream reaches only
//                                         when FLAG exists ("HELD" once Step has answered),
//                                         then checks that the step completed
//   cuda_e2e_worker SOCKET JOB replace    a step, then a second CudaGradients registered
//                                         through the same client: the first lets go of its
//                                         results and refuses to step, the second steps; then
//                                         the second moves to another client, and a third
//                                         through the first client leaves it be, and
//                                         an arena registered in its place refuses its steps
// Prints "RESULT ok ..." or "RESULT <what failed>".
#include <cuda_runtime.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "client_lib/arena.h"
#include "client_lib/cuda_gradients.h"
#include "core/rule.h"
#include "kernels/cuda/driver_api.h"
#include "kernels/half.h"

namespace {

int Fail(const std::string& what) {
  std::printf("RESULT %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

struct Setup {
  std::unique_ptr<gstab::Client> client;
  std::unique_ptr<gstab::CudaGradients> grads;
  cudaStream_t stream = nullptr;
};

// Attaches `job` and registers `tensors` (pointer, numel, dtype) in one group "g"; a null
// pointer is allocated by CudaGradients (and returned in `allocated`).
absl::StatusOr<Setup> Connect(const char* socket, const char* job,
                              std::vector<std::tuple<void*, uint64_t, gstab::DType>> tensors,
                              void** allocated = nullptr) {
  Setup s;
  auto grads = gstab::CudaGradients::Create(0);
  if (!grads.ok()) return grads.status();
  s.grads = *std::move(grads);
  int i = 0;
  for (auto& [ptr, numel, dtype] : tensors) {
    const std::string name = "t" + std::to_string(i++);
    if (ptr == nullptr) {
      absl::StatusOr<void*> p = s.grads->AllocateTensor(name, numel, dtype, "g");
      if (!p.ok()) return p.status();
      if (allocated != nullptr) *allocated = *p;
      continue;
    }
    if (absl::Status st = s.grads->AddTensor(name, ptr, numel, dtype, "g"); !st.ok()) return st;
  }
  auto client = gstab::Client::Connect(socket);
  if (!client.ok()) return client.status();
  s.client = *std::move(client);
  gstab::AttachOptions o;
  o.job = job;
  if (absl::Status st = s.client->Attach(o); !st.ok()) return st;
  if (absl::Status st = s.grads->Register(s.client.get()); !st.ok()) return st;
  cudaStreamCreate(&s.stream);
  return s;
}

int Check(const char* socket, const char* job) {
  constexpr size_t kBlock = gstab::kIpcGranule;
  char* block = nullptr;
  if (cudaMalloc(&block, kBlock) != cudaSuccess) return Fail("no device memory");
  float* w = reinterpret_cast<float*>(block + 256);         // inside the block, as a caching
  uint16_t* b = reinterpret_cast<uint16_t*>(block + 8192);  // allocator would hand out
  absl::StatusOr<Setup> s =
      Connect(socket, job, {{w, 1000, gstab::DType::kFloat32}, {b, 777, gstab::DType::kBFloat16}});
  if (!s.ok()) return Fail("setup: " + s.status().ToString());
  if (s->grads->groups() != std::vector<std::string>{"g"} ||
      s->grads->results_bytes() != sizeof(gstab::StepResultsHeader) + sizeof(gstab::StepOutcome)) {
    return Fail("unexpected results layout");
  }
  gstab::RuleParams params;
  gstab::GroupStats reference;
  double worst_w = 0, worst_b = 0, worst_norm = 0;  // relative errors
  std::vector<float> hw(1000), out_w(1000);
  std::vector<uint16_t> hb(777), out_b(777);
  struct {
    gstab::StepResultsHeader header;
    gstab::StepOutcome outcome;
  } results;
  for (uint64_t step = 1; step <= 4; ++step) {
    const float f = step == 3 ? 1e4f : 1.0f;
    for (int i = 0; i < 1000; ++i) hw[i] = f * std::sin(0.01f * static_cast<float>(i * step));
    for (int i = 0; i < 777; ++i) {
      hb[i] = gstab::FloatToBFloat16(f * std::cos(0.02f * static_cast<float>(i + step)));
    }
    if (step == 4) hw[123] = NAN;
    cudaMemcpyAsync(w, hw.data(), 4000, cudaMemcpyHostToDevice, s->stream);
    cudaMemcpyAsync(b, hb.data(), 777 * 2, cudaMemcpyHostToDevice, s->stream);
    absl::StatusOr<gstab::v1::StepResponse> r = s->grads->Step(s->client.get(), step, s->stream);
    if (!r.ok()) return Fail("step " + std::to_string(step) + ": " + r.status().ToString());
    // Everything below is ordered after `done` on the stream.
    cudaMemcpyAsync(out_w.data(), w, 4000, cudaMemcpyDeviceToHost, s->stream);
    cudaMemcpyAsync(out_b.data(), b, 777 * 2, cudaMemcpyDeviceToHost, s->stream);
    cudaMemcpyAsync(&results, s->grads->device_results(), sizeof results, cudaMemcpyDeviceToHost,
                    s->stream);
    if (cudaStreamSynchronize(s->stream) != cudaSuccess) return Fail("stream failed");
    double sum = 0;
    for (float x : hw) sum += double(x) * x;
    for (uint16_t x : hb) sum += double(gstab::BFloat16ToFloat(x)) * gstab::BFloat16ToFloat(x);
    const gstab::StepOutcome want = gstab::ApplyRule(params, &reference, sum, step == 4);
    if (results.header.step != step || results.header.num_groups != 1 ||
        results.header.flags != want.flags || results.outcome.flags != want.flags) {
      return Fail("results buffer of step " + std::to_string(step) + ": step " +
                  std::to_string(results.header.step) + " flags " +
                  std::to_string(results.header.flags) + ", want flags " +
                  std::to_string(want.flags));
    }
    if (step == 4) {
      if ((results.header.flags & gstab::kFlagSkipped) == 0) return Fail("NaN step not skipped");
      continue;
    }
    worst_norm = std::max(worst_norm, std::abs(results.outcome.norm / want.norm - 1));
    for (int i = 0; i < 1000; ++i) {
      const double x = hw[i] * want.scale;
      if (x != 0) worst_w = std::max(worst_w, std::abs(out_w[i] / x - 1));
    }
    for (int i = 0; i < 777; ++i) {
      const double x = gstab::BFloat16ToFloat(hb[i]) * want.scale;
      if (x != 0) worst_b = std::max(worst_b, std::abs(gstab::BFloat16ToFloat(out_b[i]) / x - 1));
    }
  }
  auto stats = s->client->GetStats();
  const unsigned long long accepted = stats.ok() ? stats->groups(0).accepted_steps() : 0;
  const unsigned long long non_finite = stats.ok() ? stats->groups(0).non_finite_steps() : 0;
  // fp32: the norm's fp32 partial sums (within 1e-6) and two roundings of 2^-24; bf16: one
  // rounding of the product to 8 significant bits (2^-8).
  const bool ok =
      worst_w < 2e-6 && worst_b < 4e-3 && worst_norm < 1e-6 && accepted == 3 && non_finite == 1;
  std::printf(
      "RESULT %s worst_fp32=%.3g worst_bf16=%.3g worst_norm=%.3g accepted=%llu "
      "non_finite=%llu\n",
      ok ? "ok" : "mismatch", worst_w, worst_b, worst_norm, accepted, non_finite);
  return ok ? 0 : 1;
}

size_t FreeDeviceMemory() {
  size_t free = 0, total = 0;
  cudaMemGetInfo(&free, &total);
  return free;
}

int Loop(const char* socket, const char* job, long steps) {
  constexpr uint64_t kNumel = 1 << 20;
  void* g = nullptr;  // allocated and owned by CudaGradients
  absl::StatusOr<Setup> s = Connect(socket, job, {{nullptr, kNumel, gstab::DType::kBFloat16}}, &g);
  if (!s.ok()) return Fail("setup: " + s.status().ToString());
  cudaMemset(g, 0x3c, kNumel * 2);  // bf16 0.0115
  // A job that has stepped before (another worker of it ran, and detached) goes on from its
  // last step.
  absl::StatusOr<gstab::v1::GetStatsResponse> stats = s->client->GetStats();
  if (!stats.ok()) return Fail("stats: " + stats.status().ToString());
  const uint64_t first = stats->last_step() + 1;
  size_t free_at_100 = 0;
  for (long step = 1; step <= steps || steps < 0; ++step) {
    absl::StatusOr<gstab::v1::StepResponse> r =
        s->grads->Step(s->client.get(), first + static_cast<uint64_t>(step) - 1, s->stream);
    if (!r.ok()) return Fail("step " + std::to_string(step) + ": " + r.status().ToString());
    if (step == 1 && steps < 0) {
      std::printf("STEPPING\n");
      std::fflush(stdout);
    }
    if (step == 100) {
      cudaStreamSynchronize(s->stream);
      free_at_100 = FreeDeviceMemory();
    }
  }
  cudaStreamSynchronize(s->stream);
  const size_t free_at_end = FreeDeviceMemory();
  if (absl::Status st = s->client->Detach(); !st.ok()) return Fail("detach: " + st.ToString());
  std::printf("RESULT ok steps=%ld free_at_100=%zu free_at_end=%zu\n", steps, free_at_100,
              free_at_end);
  return 0;
}

// A step queued behind a gate on the worker's stream (standing in for a long backward pass,
// or a worker that stalls before it): Step answers while the GPU has not reached the ready
// write, since the gate opens only after Step has returned. Meanwhile gstabd's stream for this
// job waits at the ready word, and other jobs must go on.
// A job of one bf16 tensor of kHeldNumel elements whose step 1 is sent while its stream waits at
// a gate (a word of this process's, 0 until opened), as after a long backward pass: the step is
// held at its ready word on gstabd's side. Prints HELD once Step has answered.
constexpr uint64_t kHeldNumel = 1 << 20;
struct HeldStep {
  Setup s;
  uint32_t* gate = nullptr;
};

// Opens the gate from a stream of its own (the worker's stream is the one waiting).
absl::Status OpenGate(uint32_t* gate) {
  cudaStream_t opener;
  cudaStreamCreateWithFlags(&opener, cudaStreamNonBlocking);
  if (absl::Status st = gstab::StreamWriteValue(opener, gate, 1); !st.ok()) {
    return absl::InternalError("opening the gate: " + st.ToString());
  }
  return absl::OkStatus();
}

absl::StatusOr<HeldStep> StepHeldAtAGate(const char* socket, const char* job) {
  HeldStep held;
  void* g = nullptr;
  absl::StatusOr<Setup> s =
      Connect(socket, job, {{nullptr, kHeldNumel, gstab::DType::kBFloat16}}, &g);
  if (!s.ok()) return absl::Status(s.status().code(), "setup: " + s.status().ToString());
  held.s = *std::move(s);
  if (cudaMalloc(&held.gate, sizeof *held.gate) != cudaSuccess) {
    return absl::ResourceExhaustedError("no device memory");
  }
  cudaMemset(held.gate, 0, sizeof *held.gate);
  cudaMemset(g, 0x3c, kHeldNumel * 2);
  if (cudaDeviceSynchronize() != cudaSuccess) {
    return absl::InternalError("setup on the device failed");
  }
  if (absl::Status st = gstab::StreamWaitValue(held.s.stream, held.gate, 1); !st.ok()) {
    return absl::InternalError("gate: " + st.ToString());
  }
  absl::StatusOr<gstab::v1::StepResponse> r =
      held.s.grads->Step(held.s.client.get(), 1, held.s.stream);
  if (!r.ok()) {
    (void)OpenGate(held.gate);  // else freeing the gradients would wait for the stream for good
    return absl::Status(r.status().code(), "step: " + r.status().ToString());
  }
  std::printf("HELD\n");
  std::fflush(stdout);
  return held;
}

int Held(const char* socket, const char* job, const char* flag) {
  absl::StatusOr<HeldStep> held = StepHeldAtAGate(socket, job);
  if (!held.ok()) return Fail(std::string(held.status().message()));
  Setup& s = held->s;
  // Held far longer than the test waits for the other job, so that a job held up fails there.
  for (int i = 0; i < 60000 && !std::filesystem::exists(flag); ++i) usleep(10000);
  // Still held when the test opens the gate (after another job's whole run): else this job
  // held nothing up, and the test would prove nothing.
  if (cudaStreamQuery(s.stream) != cudaErrorNotReady) {
    return Fail("the step was no longer held when the gate opened");
  }
  if (absl::Status st = OpenGate(held->gate); !st.ok()) return Fail(std::string(st.message()));
  gstab::StepResultsHeader header{};
  cudaMemcpyAsync(&header, s.grads->device_results(), sizeof header, cudaMemcpyDeviceToHost,
                  s.stream);
  if (cudaStreamSynchronize(s.stream) != cudaSuccess) return Fail("stream failed");
  if (header.step != 1 || (header.flags & gstab::kFlagAccepted) == 0) {
    return Fail("the held step did not complete: results step " + std::to_string(header.step) +
                " flags " + std::to_string(header.flags));
  }
  if (absl::Status st = s.client->Detach(); !st.ok()) return Fail("detach: " + st.ToString());
  std::printf("RESULT ok held step completed\n");
  return 0;
}

// As Held, but gstabd is killed before the gate opens (the test writes `flag` after): its
// stream's done write never runs, and the client library writes the done word itself once its
// keep-alive finds no gstabd. The worker's stream must then finish rather than wait for good.
int Orphaned(const char* socket, const char* job, const char* flag) {
  absl::StatusOr<HeldStep> held = StepHeldAtAGate(socket, job);
  if (!held.ok()) return Fail(std::string(held.status().message()));
  Setup& s = held->s;
  for (int i = 0; i < 6000 && !std::filesystem::exists(flag); ++i) usleep(10000);
  if (absl::Status st = OpenGate(held->gate); !st.ok()) return Fail(std::string(st.message()));
  // Blocked in a wait for the device, as a training loop's next loss.item() would be, while the
  // client's keep-alive thread releases it; SIGALRM ends the process if nothing does.
  alarm(30);
  const cudaError_t e = cudaDeviceSynchronize();
  alarm(0);
  if (e != cudaSuccess) return Fail(std::string("waiting for the device: ") + cudaGetErrorName(e));
  // The next step says gstabd is gone.
  absl::StatusOr<gstab::v1::StepResponse> r = s.grads->Step(s.client.get(), 2, s.stream);
  if (r.ok()) return Fail("a step with gstabd gone succeeded");
  std::printf("RESULT ok released: %s\n", r.status().ToString().c_str());
  return 0;
}

int Replace(const char* socket, const char* job) {
  absl::StatusOr<Setup> s = Connect(socket, job, {{nullptr, 4096, gstab::DType::kFloat32}});
  if (!s.ok()) return Fail("setup: " + s.status().ToString());
  if (absl::StatusOr<gstab::v1::StepResponse> r = s->grads->Step(s->client.get(), 1, s->stream);
      !r.ok()) {
    return Fail("first registration's step: " + r.status().ToString());
  }
  auto second = gstab::CudaGradients::Create(0);
  if (!second.ok()) return Fail("second: " + second.status().ToString());
  absl::StatusOr<void*> u = (*second)->AllocateTensor("u", 2048, gstab::DType::kBFloat16);
  if (!u.ok()) return Fail("second's tensor: " + u.status().ToString());
  // A tensor running past its allocation is refused when added, naming it, and leaves the
  // registration to come (and the first's, still in place) alone.
  const absl::Status past =
      (*second)->AddTensor("past", *u, uint64_t{1} << 40, gstab::DType::kBFloat16);
  if (past.code() != absl::StatusCode::kInvalidArgument ||
      past.message().find("tensor 'past'") == std::string::npos ||
      past.message().find("run past the end of its CUDA allocation") == std::string::npos) {
    return Fail("a tensor past its allocation: " + past.ToString());
  }
  if (absl::Status st = (*second)->Register(s->client.get()); !st.ok()) {
    return Fail("second registration: " + st.ToString());
  }
  if (s->grads->device_results() != nullptr) return Fail("the first kept its results mapped");
  absl::StatusOr<gstab::v1::StepResponse> stale = s->grads->Step(s->client.get(), 2, s->stream);
  if (stale.ok() || stale.status().code() != absl::StatusCode::kFailedPrecondition ||
      stale.status().message().find("not registered") == std::string::npos) {
    return Fail("the replaced registration's step: " + stale.status().ToString());
  }
  for (uint64_t step = 2; step <= 3; ++step) {
    absl::StatusOr<gstab::v1::StepResponse> r = (*second)->Step(s->client.get(), step, s->stream);
    if (!r.ok()) return Fail("second's step: " + r.status().ToString());
  }
  if (cudaStreamSynchronize(s->stream) != cudaSuccess) return Fail("stream failed");
  gstab::StepResultsHeader header{};
  cudaMemcpy(&header, (*second)->device_results(), sizeof header, cudaMemcpyDeviceToHost);
  if (header.step != 3 || (header.flags & gstab::kFlagAccepted) == 0) {
    return Fail("the second's results: step " + std::to_string(header.step));
  }
  // The second moves to another client (of another job); a third registered through the first
  // client then replaces nothing of the second's.
  auto other = gstab::Client::Connect(socket);
  if (!other.ok()) return Fail("other client: " + other.status().ToString());
  gstab::AttachOptions o;
  o.job = std::string(job) + "-moved";
  if (absl::Status st = (*other)->Attach(o); !st.ok()) return Fail("other: " + st.ToString());
  if (absl::Status st = (*second)->Register(other->get()); !st.ok()) {
    return Fail("second on the other client: " + st.ToString());
  }
  auto third = gstab::CudaGradients::Create(0);
  if (!third.ok()) return Fail("third: " + third.status().ToString());
  if (absl::StatusOr<void*> p = (*third)->AllocateTensor("v", 1024, gstab::DType::kFloat32);
      !p.ok()) {
    return Fail("third's tensor: " + p.status().ToString());
  }
  if (absl::Status st = (*third)->Register(s->client.get()); !st.ok()) {
    return Fail("third registration: " + st.ToString());
  }
  if ((*second)->device_results() == nullptr) return Fail("the third closed the moved second");
  if (absl::StatusOr<gstab::v1::StepResponse> r = (*second)->Step(other->get(), 1, s->stream);
      !r.ok()) {
    return Fail("the moved second's step: " + r.status().ToString());
  }
  if (cudaStreamSynchronize(s->stream) != cudaSuccess) return Fail("stream failed");
  // The other client attaches to a job of host memory and registers an arena: gstabd has freed
  // the second's results buffer, and its step is refused rather than left waiting for good.
  gstab::AttachOptions host;
  host.job = std::string(job) + "-host";
  if (absl::Status st = (*other)->Attach(host); !st.ok()) return Fail("host: " + st.ToString());
  gstab::GradientArena arena;
  arena.AddTensor("h", 1024, gstab::DType::kFloat32);
  if (absl::Status st = arena.Allocate(); !st.ok()) return Fail("arena: " + st.ToString());
  if (absl::Status st = (*other)->Register(arena); !st.ok()) {
    return Fail("the arena's registration: " + st.ToString());
  }
  absl::StatusOr<gstab::v1::StepResponse> gone = (*second)->Step(other->get(), 2, s->stream);
  if (gone.ok() || gone.status().code() != absl::StatusCode::kFailedPrecondition ||
      gone.status().message().find("no longer this client's registration") == std::string::npos) {
    return Fail("a step of buffers an arena replaced: " + gone.status().ToString());
  }
  if (absl::Status st = s->client->Detach(); !st.ok()) return Fail("detach: " + st.ToString());
  if (absl::Status st = (*other)->Detach(); !st.ok()) return Fail("detach: " + st.ToString());
  std::printf("RESULT ok the second registration replaced the first\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  cudaSetDevice(0);
  const std::string mode = argv[3];
  if (mode == "check") return Check(argv[1], argv[2]);
  if (mode == "loop" && argc == 5) return Loop(argv[1], argv[2], std::atol(argv[4]));
  if (mode == "forever") return Loop(argv[1], argv[2], -1);
  if (mode == "held" && argc == 5) return Held(argv[1], argv[2], argv[4]);
  if (mode == "orphaned" && argc == 5) return Orphaned(argv[1], argv[2], argv[4]);
  if (mode == "replace") return Replace(argv[1], argv[2]);
  return 2;
}
