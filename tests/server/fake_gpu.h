// Fakes behind gstabd's GPU seams (server/gpu_pipeline.h) for tests of the job logic of the
// CUDA path on machines without a GPU: "device" memory that is host memory, a pipeline that runs
// each step on the CPU and reports it a step later, and a worker whose gradients it stabilizes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/rule.h"
#include "gtest/gtest.h"
#include "kernels/cpu_kernels.h"
#include "kernels/cross_node_mode.h"
#include "server/gpu_pipeline.h"
#include "server/job.h"
#include "server/registration.h"

namespace gstab {

// "Device" memory that is host memory; a handle is the address of the buffer, in 64 bytes.
class HostDeviceMemory final : public DeviceMemory {
 public:
  absl::StatusOr<std::pair<std::shared_ptr<void>, char*>> Open(const std::string& handle, int,
                                                               uint64_t offset, uint64_t) override {
    char* base;
    std::memcpy(&base, handle.data(), sizeof base);
    return std::make_pair(std::make_shared<int>(0), base + offset);
  }
  // "GPU-<n>" padded to 16 bytes is this machine's GPU n.
  absl::StatusOr<int> ResolveDevice(const std::string& uuid, int ordinal) override {
    if (uuid.empty()) return ordinal;
    if (uuid.rfind("GPU-", 0) != 0) return absl::InvalidArgumentError("unknown GPU");
    return uuid[4] - '0';
  }
};

// A ready value, as a CUDA worker's Step sends: one more at each call, as gstabd refuses one
// not after the last (the fake pipelines do not wait on it).
inline uint32_t NextReady() {
  static std::atomic<uint32_t> last{0};
  return ++last;
}

// The "GPU" that a test's fake pipelines share: whether it still has work queued (a step held at
// a worker's ready word: then Statistics, which would wait, must not be called), for every rank
// or some; the closing calls the pipelines got, in order ("release 1", "abort 0", "take idle 0"
// or "take busy 0", with the rank), and the results buffer each rank's TakeResults handed over;
// what a release or an abort does to it; an error every Enqueue returns instead; and whether
// finished steps are held back from Poll (a slow GPU, whose steps then finish together), or the
// newest one is finished too (a GPU that has caught up; else it is "still running").
struct FakeGpu {
  std::atomic<bool> busy{false};
  std::atomic<int> idle_checks{0};  // Idle() calls: an import waiting for the GPU polls it
  std::set<uint32_t> busy_ranks;
  std::vector<std::string> calls;
  std::map<uint32_t, std::weak_ptr<void>> results;
  std::function<void(uint32_t rank)> on_release, on_abort;
  absl::Status enqueue_error;
  bool hold_results = false;
  bool caught_up = false;
};

// Runs each step on the CPU at once but reports it only at the next Poll after that, like a
// GPU that finishes later. `extra_flags` are set on every outcome; with kFlagMismatch or
// kFlagVoided, every step applies nothing. `rank`: its rank in the job's communicator; `gpu`
// (optional): see FakeGpu; `modes`: the spec's (a group of kUnregistered is left alone, as
// LaunchApplyRule leaves it).
class LaggingPipeline final : public GpuPipeline {
 public:
  LaggingPipeline(const ChunkTable& table, std::vector<GroupStats> stats, int* live,
                  uint32_t extra_flags = 0, uint32_t rank = 0, FakeGpu* gpu = nullptr,
                  std::vector<uint8_t> modes = {})
      : table_(table),
        stats_(std::move(stats)),
        modes_(std::move(modes)),
        live_(live),
        extra_flags_(extra_flags),
        rank_(rank),
        gpu_(gpu) {
    ++*live_;
  }
  ~LaggingPipeline() override { --*live_; }
  absl::Status Enqueue(uint64_t step, const RuleParams& params, uint32_t, absl::Time) override {
    if (gpu_ != nullptr && !gpu_->enqueue_error.ok()) return gpu_->enqueue_error;
    std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table_));
    std::vector<double> sums(table_.num_groups());
    std::vector<uint32_t> flags(table_.num_groups());
    (void)CpuGroupSumSquares(table_, absl::MakeSpan(scratch), absl::MakeSpan(sums),
                             absl::MakeSpan(flags), nullptr);
    GpuStepResult r;
    r.step = step;
    std::vector<float> scales;
    // A step the GPU voided, or the nodes disagreed on, applies nothing (as LaunchApplyRule).
    const bool applied = (extra_flags_ & (kFlagMismatch | kFlagVoided)) == 0;
    const bool step_non_finite =
        std::any_of(flags.begin(), flags.end(), [](uint32_t f) { return f != 0; });
    for (size_t g = 0; g < sums.size(); ++g) {
      StepOutcome out;
      if (g < modes_.size() && modes_[g] == kUnregistered) {
        out.flags = kFlagUnregistered;
      } else if (applied) {
        out = ApplyRuleInStep(params, &stats_[g], sums[g], flags[g] != 0, step_non_finite);
      } else {
        out.norm = NAN;
        out.flags = kFlagSkipped;
      }
      if ((out.flags & kFlagUnregistered) == 0) out.flags |= extra_flags_;  // as the kernel
      r.outcomes.push_back(out);
      scales.push_back(static_cast<float>(out.scale));
    }
    (void)CpuScaleGroups(table_, scales, nullptr);
    r.stats = stats_;
    queue_.push_back(std::move(r));
    snapshots_.push_back(GpuSnapshot{step, stats_});
    return absl::OkStatus();
  }
  std::vector<GpuStepResult> Poll() override {
    std::vector<GpuStepResult> done;
    const size_t running = gpu_ != nullptr && gpu_->caught_up ? 0 : 1;  // the newest, unless
    while (queue_.size() > running && (gpu_ == nullptr || !gpu_->hold_results)) {
      done.push_back(queue_.front());
      queue_.pop_front();
      if (snapshots_.front().has_value()) snapshot_ = snapshots_.front();
      snapshots_.pop_front();
    }
    return done;
  }
  std::optional<GpuSnapshot> Snapshot() override { return snapshot_; }
  absl::StatusOr<std::vector<GroupStats>> Statistics() override {
    EXPECT_TRUE(Idle()) << "waited for a GPU that is busy";
    return stats_;
  }
  absl::Status SetStatistics(const std::vector<GroupStats>& stats, uint64_t step) override {
    if (!Idle()) {  // as CudaStepper, once its wait for the stream runs out
      return absl::DeadlineExceededError("replacing the statistics did not complete in time");
    }
    stats_ = stats;
    snapshot_ = GpuSnapshot{step, stats};
    for (std::optional<GpuSnapshot>& queued : snapshots_) queued.reset();  // older than these
    return absl::OkStatus();
  }
  std::string ResultsHandle() const override { return std::string(64, 'R'); }
  std::shared_ptr<void> TakeResults(absl::Duration) override {
    Log(Idle() ? "take idle" : "take busy");
    auto results = std::make_shared<int>(0);
    if (gpu_ != nullptr) gpu_->results[rank_] = results;
    return results;
  }
  bool Idle() override {
    if (gpu_ != nullptr) ++gpu_->idle_checks;
    return gpu_ == nullptr || (!gpu_->busy && gpu_->busy_ranks.count(rank_) == 0);
  }
  void Abort(const std::string&) override {
    Log("abort");
    if (gpu_ != nullptr && gpu_->on_abort) gpu_->on_abort(rank_);
  }
  void Release() override {
    Log("release");
    if (gpu_ != nullptr && gpu_->on_release) gpu_->on_release(rank_);
  }
  uint64_t ResultsBytes() const override {
    return sizeof(StepResultsHeader) + table_.num_groups() * sizeof(StepOutcome);
  }
  uint64_t ReadyOffset() const override { return (ResultsBytes() + 7) / 8 * 8; }

 private:
  ChunkTable table_;
  std::vector<GroupStats> stats_;
  const std::vector<uint8_t> modes_;
  std::deque<GpuStepResult> queue_;
  // The statistics after each queued step (none for one older than SetStatistics's).
  std::deque<std::optional<GpuSnapshot>> snapshots_;
  std::optional<GpuSnapshot> snapshot_;  // after the newest "finished" step
  int* live_;
  const uint32_t extra_flags_;
  const uint32_t rank_;
  FakeGpu* const gpu_;

  void Log(const std::string& call) {
    if (gpu_ != nullptr) gpu_->calls.push_back(call + " " + std::to_string(rank_));
  }
};

// A backend of LaggingPipelines that count themselves in `live`; `seen` (optional) gets the
// last spec; `gpu` (optional) is their shared FakeGpu; NCCL ids are "id-1", "id-2", ... (padded to
// the real size).
inline std::string Id(int n) {
  std::string id = "id-" + std::to_string(n);
  id.resize(kNcclUniqueIdBytes, '\0');
  return id;
}

inline GpuBackend LaggingBackend(int* live, uint32_t extra_flags = 0, GpuJobSpec* seen = nullptr,
                                 FakeGpu* gpu = nullptr) {
  GpuBackend backend;
  backend.make_pipeline =
      [=](int, const ChunkTable& t, const std::vector<GroupStats>& s,
          const GpuJobSpec& spec) -> absl::StatusOr<std::unique_ptr<GpuPipeline>> {
    if (seen != nullptr) *seen = spec;
    return std::unique_ptr<GpuPipeline>(
        new LaggingPipeline(t, s, live, extra_flags, spec.nccl.node_rank, gpu, spec.modes));
  };
  auto ids = std::make_shared<int>(0);
  backend.new_nccl_id = [ids]() -> absl::StatusOr<std::string> { return Id(++*ids); };
  return backend;
}

// A cuda_ipc registration request of one fp32 tensor "w" over `grads` (1000 floats).
inline v1::RegisterBuffersRequest CudaRequest(float* grads, int device = 0,
                                              const std::string& name = "w") {
  v1::RegisterBuffersRequest request;
  v1::Buffer* b = request.add_buffers();
  b->set_transport(v1::TRANSPORT_CUDA_IPC);
  std::string handle(64, '\0');
  std::memcpy(handle.data(), &grads, sizeof grads);
  b->set_ipc_handle(handle);
  b->set_size_bytes(4000);
  b->set_dtype(v1::DTYPE_FLOAT32);
  b->set_device(device);
  v1::Tensor* t = request.add_tensors();
  t->set_name(name);
  t->set_numel(1000);
  return request;
}

inline RegistrationCaps CudaCaps() {
  RegistrationCaps caps;
  caps.cuda_ipc = true;
  return caps;
}

// The same, validated and mapped.
inline MappedRegistration MapCudaRegistration(float* grads, MappingRegistry* registry,
                                              DeviceMemory* memory, int device = 0,
                                              const std::string& name = "w") {
  absl::StatusOr<RegistrationPlan> plan =
      ValidateRegistration(CudaRequest(grads, device, name), CudaCaps());
  EXPECT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<MappedRegistration> mapped = MapRegistration(*plan, registry, memory);
  EXPECT_TRUE(mapped.ok()) << mapped.status();
  return *std::move(mapped);
}

// A worker's gradients in "device" memory: 1000 floats, registered as tensor "w".
struct FakeCudaWorker {
  absl::Status Register(Job* job, uint32_t local_rank = 0, int device = 0, uint64_t session = 0) {
    return job->Register(local_rank,
                         MapCudaRegistration(grads.data(), &registry, &memory, device, tensor),
                         &registered, session);
  }
  std::string tensor = "w";  // its own norm group
  std::vector<float> grads = std::vector<float>(1000, 0.5f);
  HostDeviceMemory memory;
  MappingRegistry registry;
  v1::RegisterBuffersResponse registered;
};

// Job "gpu-job" of one local rank on a fake GPU, its worker registered.
struct OneGpuJob {
  OneGpuJob() { registered = worker.Register(&job); }
  int live = 0;
  FakeGpu gpu;
  Job job{"gpu-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, nullptr, &gpu)};
  FakeCudaWorker worker;
  absl::Status registered;
};

}  // namespace gstab
