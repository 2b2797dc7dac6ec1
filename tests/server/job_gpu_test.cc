// The job logic of the CUDA path (cuda_ipc registration, answering before the GPU finishes,
// statistics mirrored on demand) driven through the GpuPipeline / DeviceMemory seams by a
// CPU-backed pipeline, so it runs on machines without a GPU. The CUDA implementations behind
// the same seams are tested on a GPU by cuda_ipc_test.
#include <cstring>
#include <deque>

#include "core/rule.h"
#include "gtest/gtest.h"
#include "kernels/cpu_kernels.h"
#include "server/job.h"

namespace gstab {
namespace {

// "Device" memory that is host memory; a handle is the address of the buffer, in 64 bytes.
class HostDeviceMemory final : public DeviceMemory {
 public:
  absl::StatusOr<std::pair<std::shared_ptr<void>, char*>> Open(const std::string& handle, int,
                                                               uint64_t offset, uint64_t) override {
    char* base;
    std::memcpy(&base, handle.data(), sizeof base);
    return std::make_pair(std::make_shared<int>(0), base + offset);
  }
  absl::StatusOr<std::pair<std::shared_ptr<void>, void*>> OpenEvent(const std::string&,
                                                                    int) override {
    return std::make_pair(std::make_shared<int>(0), nullptr);
  }
};

// Runs each step on the CPU at once but reports it only at the next Poll after that, like a
// GPU that finishes later.
class LaggingPipeline final : public GpuPipeline {
 public:
  LaggingPipeline(const ChunkTable& table, std::vector<GroupStats> stats, int* live)
      : table_(table), stats_(std::move(stats)), live_(live) {
    ++*live_;
  }
  ~LaggingPipeline() override { --*live_; }
  absl::Status Enqueue(uint64_t step, const RuleParams& params, void*, void*) override {
    std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table_));
    std::vector<double> sums(table_.num_groups());
    std::vector<uint32_t> flags(table_.num_groups());
    (void)CpuGroupSumSquares(table_, absl::MakeSpan(scratch), absl::MakeSpan(sums),
                             absl::MakeSpan(flags), nullptr);
    GpuStepResult r{step, {}};
    std::vector<float> scales;
    for (size_t g = 0; g < sums.size(); ++g) {
      r.outcomes.push_back(ApplyRule(params, &stats_[g], sums[g], flags[g] != 0));
      scales.push_back(static_cast<float>(r.outcomes.back().scale));
    }
    (void)CpuScaleGroups(table_, scales, nullptr);
    queue_.push_back(std::move(r));
    return absl::OkStatus();
  }
  std::optional<GpuStepResult> Poll() override {
    if (queue_.size() < 2) return std::nullopt;  // the newest step is "still running"
    GpuStepResult r = queue_.front();
    queue_.pop_front();
    return r;
  }
  absl::StatusOr<std::vector<GroupStats>> Statistics() override { return stats_; }
  absl::Status SetStatistics(const std::vector<GroupStats>& stats) override {
    stats_ = stats;
    return absl::OkStatus();
  }
  std::string ResultsHandle() const override { return std::string(64, 'R'); }
  uint64_t ResultsBytes() const override {
    return sizeof(StepResultsHeader) + table_.num_groups() * sizeof(StepOutcome);
  }

 private:
  ChunkTable table_;
  std::vector<GroupStats> stats_;
  std::deque<GpuStepResult> queue_;
  int* live_;
};

TEST(JobGpuTest, AnswersBeforeTheGpuFinishesAndMirrorsStatisticsOnDemand) {
  int live = 0;
  Job job(
      "gpu-job", RuleParams{}, 1, nullptr, nullptr,
      [&live](int, const ChunkTable& t,
              const std::vector<GroupStats>& s) -> absl::StatusOr<std::unique_ptr<GpuPipeline>> {
        return std::unique_ptr<GpuPipeline>(new LaggingPipeline(t, s, &live));
      });
  std::vector<float> grads(1000, 0.5f);
  v1::RegisterBuffersRequest request;
  v1::Buffer* b = request.add_buffers();
  b->set_transport(v1::TRANSPORT_CUDA_IPC);
  std::string handle(64, '\0');
  float* base = grads.data();
  std::memcpy(handle.data(), &base, sizeof base);
  b->set_ipc_handle(handle);
  b->set_size_bytes(4000);
  b->set_dtype(v1::DTYPE_FLOAT32);
  v1::Tensor* t = request.add_tensors();
  t->set_name("w");
  t->set_numel(1000);
  request.set_ready_event(std::string(64, 'r'));
  request.set_done_event(std::string(64, 'd'));
  RegistrationCaps caps;
  caps.cuda_ipc = true;
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(request, caps);
  ASSERT_TRUE(plan.ok()) << plan.status();
  HostDeviceMemory memory;
  MappingRegistry registry;
  absl::StatusOr<MappedRegistration> mapped = MapRegistration(*plan, &registry, &memory);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  v1::RegisterBuffersResponse registered;
  ASSERT_TRUE(job.Register(0, *std::move(mapped), &registered).ok());
  EXPECT_EQ(live, 1);
  // The worker learns where its per-step results are and which group each entry is.
  EXPECT_EQ(registered.results_handle(), std::string(64, 'R'));
  EXPECT_EQ(registered.results_bytes(), 16u + 40u);
  ASSERT_EQ(registered.groups_size(), 1);
  EXPECT_EQ(registered.groups(0), "w");

  v1::StepResponse first;
  ASSERT_TRUE(job.Step(0, 1, absl::Seconds(1), &first).ok());
  EXPECT_EQ(first.step(), 1u);
  EXPECT_EQ(first.results_step(), 0u);  // nothing finished yet
  EXPECT_EQ(first.groups_size(), 0);
  v1::StepResponse second;
  ASSERT_TRUE(job.Step(0, 2, absl::Seconds(1), &second).ok());
  EXPECT_EQ(second.results_step(), 1u);  // the previous step's results
  ASSERT_EQ(second.groups_size(), 1);
  EXPECT_NEAR(second.groups(0).norm(), std::sqrt(1000 * 0.25), 1e-9);
  EXPECT_EQ(job.Step(0, 2, absl::Seconds(1), &second).code(), absl::StatusCode::kInvalidArgument);

  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 2u);  // refreshed from the pipeline

  // Import pushes the statistics into the pipeline; after the worker leaves, they remain.
  v1::JobState state = job.ExportState();
  state.mutable_groups(0)->set_t(77);
  ASSERT_TRUE(job.ImportState(state, false).ok());
  job.RemoveWorker(0);
  EXPECT_EQ(live, 0);
  v1::GetStatsResponse after;
  job.GetStats(&after);
  EXPECT_EQ(after.groups(0).accepted_steps(), 77u);
}

TEST(JobGpuTest, MixedOrMultiWorkerCudaRegistrationsAreRefused) {
  v1::RegisterBuffersRequest request;
  for (int i = 0; i < 2; ++i) {
    v1::Buffer* b = request.add_buffers();
    b->set_size_bytes(64);
    b->set_dtype(v1::DTYPE_FLOAT32);
    if (i == 0) {
      b->set_transport(v1::TRANSPORT_CUDA_IPC);
      b->set_ipc_handle(std::string(64, 'h'));
    } else {
      b->set_transport(v1::TRANSPORT_HOST_SHM);
      b->set_shm_name("/gstab-1-x");
    }
  }
  v1::Tensor* t = request.add_tensors();
  t->set_name("w");
  t->set_numel(16);
  request.set_ready_event(std::string(64, 'r'));
  request.set_done_event(std::string(64, 'd'));
  RegistrationCaps caps;
  caps.cuda_ipc = true;
  absl::Status mixed = ValidateRegistration(request, caps).status();
  EXPECT_NE(mixed.message().find("must all be cuda_ipc on one device"), std::string::npos) << mixed;
  request.mutable_buffers()->RemoveLast();
  request.clear_done_event();
  absl::Status no_events = ValidateRegistration(request, caps).status();
  EXPECT_NE(no_events.message().find("done_event"), std::string::npos) << no_events;
}

}  // namespace
}  // namespace gstab
