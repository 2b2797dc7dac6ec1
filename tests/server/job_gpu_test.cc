// The job logic of the CUDA path (cuda_ipc registration, answering before the GPU finishes,
// statistics mirrored on demand) driven through the GpuPipeline / DeviceMemory seams by a
// CPU-backed pipeline, so it runs on machines without a GPU. The CUDA implementations behind
// the same seams are tested on a GPU by cuda_ipc_test.
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/cross_node.h"
#include "server/gloo_collective.h"
#include "server/job.h"
#include "server/memory_claims.h"
#include "tests/server/cpu_worker.h"
#include "tests/server/fake_gpu.h"

namespace gstab {
namespace {

TEST(JobGpuTest, AnswersBeforeTheGpuFinishesAndMirrorsStatisticsOnDemand) {
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  Job& job = one.job;
  FakeGpu& gpu = one.gpu;
  int& live = one.live;
  const v1::RegisterBuffersResponse& registered = one.worker.registered;
  EXPECT_EQ(live, 1);
  // The worker learns where its per-step results are and which group each entry is.
  EXPECT_EQ(registered.results_handle(), std::string(64, 'R'));
  EXPECT_EQ(registered.results_bytes(), 16u + 40u);
  EXPECT_EQ(registered.ready_offset(), 56u);  // the handshake words, past the results
  EXPECT_EQ(registered.done_offset(), 60u);
  ASSERT_EQ(registered.groups_size(), 1);
  EXPECT_EQ(registered.groups(0), "w");

  v1::StepResponse first;
  // A CUDA step says which ready write it follows; a client that does not is told so.
  absl::Status no_ready = job.Step(0, 1, absl::Seconds(1), &first);
  EXPECT_EQ(no_ready.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_ready.message().find("no ready_value"), std::string::npos) << no_ready;
  ASSERT_TRUE(job.Step(0, 1, absl::Seconds(1), &first, NextReady()).ok());
  EXPECT_EQ(first.step(), 1u);
  EXPECT_EQ(first.results_step(), 0u);  // nothing finished yet
  EXPECT_EQ(first.groups_size(), 0);
  v1::StepResponse second;
  ASSERT_TRUE(job.Step(0, 2, absl::Seconds(1), &second, NextReady()).ok());
  EXPECT_EQ(second.results_step(), 1u);  // the previous step's results
  ASSERT_EQ(second.groups_size(), 1);
  EXPECT_NEAR(second.groups(0).norm(), std::sqrt(1000 * 0.25), 1e-9);
  EXPECT_EQ(job.Step(0, 2, absl::Seconds(1), &second, NextReady()).code(),
            absl::StatusCode::kInvalidArgument);

  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 1u);  // the newest finished step's snapshot
  // A checkpoint never waits for the GPU: while a step is queued (held at its worker's ready
  // word, say) it takes the newest finished step's copy, at that step, and the exact state
  // once idle.
  gpu.busy = true;
  EXPECT_EQ(job.ExportState().groups(0).t(), 1u);
  EXPECT_EQ(job.ExportState().last_step(), 1u);
  gpu.busy = false;
  EXPECT_EQ(job.ExportState().groups(0).t(), 2u);
  EXPECT_EQ(job.ExportState().last_step(), 2u);

  // Import pushes the statistics into the pipeline; after the worker leaves, they remain. One
  // made while a step stays queued is refused once its wait runs out (the other groups'
  // statistics here would be the step before it, and writing them back would undo it), and
  // changes nothing, on the host either.
  v1::JobState state = job.ExportState();
  state.mutable_groups(0)->set_t(77);
  state.set_last_step(50);
  gpu.busy = true;
  absl::Status busy = job.ImportState(state, false, absl::Milliseconds(20));
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(busy.message().find("still queued on its GPU after 20ms"), std::string::npos) << busy;
  EXPECT_NE(busy.message().find("import between steps"), std::string::npos) << busy;
  gpu.busy = false;
  EXPECT_EQ(job.ExportState().groups(0).t(), 2u);
  EXPECT_EQ(job.ExportState().last_step(), 2u);
  ASSERT_TRUE(job.ImportState(state, false).ok());
  EXPECT_EQ(job.ExportState().last_step(), 50u);
  job.RemoveWorker(0);
  EXPECT_EQ(live, 0);
  v1::GetStatsResponse after;
  job.GetStats(&after);
  EXPECT_EQ(after.groups(0).accepted_steps(), 77u);
}

// gstabd's stream waits until the worker's ready word is at or after the step's ready_value
// (cyclically): a value not after the last step's would pass at once, and the kernels would read
// gradients the backward pass is still writing. Refused, changing nothing; gaps and the wrap
// past 2^32 - 1 (to 1: 0 is no value) are taken.
TEST(JobGpuTest, AReadyValueNotAfterTheLastStepsIsRefused) {
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  v1::StepResponse r;
  ASSERT_TRUE(one.job.Step(0, 1, absl::Seconds(1), &r, 10).ok());
  for (uint32_t stale : {10u, 9u, 0x8000000Au}) {  // the same, behind, half the cycle ahead
    const absl::Status s = one.job.Step(0, 2, absl::Seconds(1), &r, stale);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(
                  absl::StrCat("carries ready_value ", stale, ", not after its last step's, 10")),
              std::string::npos)
        << s;
  }
  EXPECT_TRUE(one.job.Step(0, 2, absl::Seconds(1), &r, 12).ok()) << "a gap";
  uint64_t step = 3;
  for (uint32_t ready : {0x60000000u, 0xC0000000u, UINT32_MAX}) {  // in hops under half the cycle
    EXPECT_TRUE(one.job.Step(0, step++, absl::Seconds(1), &r, ready).ok()) << ready;
  }
  EXPECT_TRUE(one.job.Step(0, step++, absl::Seconds(1), &r, 1).ok()) << "past the wrap";
  EXPECT_EQ(one.job.Step(0, step, absl::Seconds(1), &r, UINT32_MAX).code(),
            absl::StatusCode::kInvalidArgument);
}

// New betas on a GPU job with registered buffers are refused (its statistics, on the GPU, would
// have to be re-expressed for them in stream order), changing nothing; other fields change.
TEST(JobGpuTest, NewBetasAreRefusedWhileGpuBuffersAreRegistered) {
  int live = 0;
  FakeGpu gpu;
  Job job("gpu-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, nullptr, &gpu));
  FakeCudaWorker worker;
  ASSERT_TRUE(worker.Register(&job).ok());
  v1::StepResponse response;
  for (uint64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
  }
  v1::PolicyConfig betas;
  betas.mutable_stabilize()->set_beta1(0.9);
  v1::UpdateConfigResponse updated;
  absl::Status refused = job.UpdateConfig(betas, &updated);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("beta1, beta2 and bias_correction"), std::string::npos)
      << refused;
  EXPECT_EQ(job.params().beta1, RuleParams{}.beta1);
  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  EXPECT_TRUE(job.UpdateConfig(clip, &updated).ok());
}

// A restarted worker's new session that steps before its old session's removal reaches the job
// is told to register, rather than have its step queued on the old session's pipeline.
TEST(JobGpuTest, ASessionStepsOnItsOwnRegistrationOnly) {
  int live = 0;
  Job job("gpu-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live));
  FakeCudaWorker old_worker;
  ASSERT_TRUE(old_worker.Register(&job, 0, 0, /*session=*/1).ok());
  v1::StepResponse r;
  const absl::Status early = job.Step(0, 1, absl::Seconds(1), &r, NextReady(), /*session=*/2);
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition) << early;
  EXPECT_NE(early.message().find("has no buffers of this session's"), std::string::npos) << early;
  EXPECT_TRUE(job.Step(0, 1, absl::Seconds(1), &r, NextReady(), /*session=*/1).ok());
}

// A session's calls can arrive after a newer session of the same local rank has replaced it
// (gstabd removes a dropped session's worker after releasing its own lock, and RPCs already
// past its session check go on): the newer session's registration stays, and the older
// session's late Register and Step are refused.
TEST(JobGpuTest, AnOlderSessionsLateCallsLeaveANewerSessionsRegistration) {
  int live = 0;
  Job job("gpu-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live));
  FakeCudaWorker old_worker, new_worker;
  ASSERT_TRUE(old_worker.Register(&job, 0, 0, /*session=*/1).ok());
  ASSERT_TRUE(new_worker.Register(&job, 0, 0, /*session=*/2).ok());
  job.RemoveWorker(0, /*gone=*/true, /*session=*/1);
  EXPECT_EQ(live, 1);
  absl::Status late = old_worker.Register(&job, 0, 0, /*session=*/1);
  EXPECT_EQ(late.code(), absl::StatusCode::kUnauthenticated) << late;
  EXPECT_NE(late.message().find("this session of local rank 0 of job"), std::string::npos) << late;
  v1::StepResponse r;
  EXPECT_EQ(job.Step(0, 1, absl::Seconds(1), &r, NextReady(), /*session=*/1).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(job.Step(0, 1, absl::Seconds(1), &r, NextReady(), /*session=*/2).ok());
  job.RemoveWorker(0, /*gone=*/true, /*session=*/2);
  EXPECT_EQ(live, 0);
  EXPECT_EQ(job.Step(0, 2, absl::Seconds(1), &r, NextReady(), /*session=*/3).code(),
            absl::StatusCode::kFailedPrecondition);  // a newer session that has not registered
  // A session ended before its registration lands: refused, nothing registered.
  EXPECT_EQ(new_worker.Register(&job, 0, 0, /*session=*/2).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(live, 0);

  // Also when another local rank has ended the GPU generation since (its workers forgotten).
  Job pair("gpu-pair", RuleParams{}, 2, nullptr, nullptr, LaggingBackend(&live));
  FakeCudaWorker a, b, other;
  ASSERT_TRUE(a.Register(&pair, 0, 0, /*session=*/1).ok());
  ASSERT_TRUE(other.Register(&pair, 1, 1, /*session=*/2).ok());
  ASSERT_TRUE(b.Register(&pair, 0, 0, /*session=*/3).ok());  // a new generation
  ASSERT_TRUE(other.Register(&pair, 1, 1, /*session=*/2).ok());
  ASSERT_TRUE(other.Register(&pair, 1, 1, /*session=*/2).ok());  // which this ends
  const int before = live;
  pair.RemoveWorker(0, /*gone=*/true, /*session=*/1);
  EXPECT_EQ(live, before);
  absl::Status again = pair.Step(0, 1, absl::Seconds(1), &r, NextReady(), /*session=*/3);
  EXPECT_NE(again.message().find("local rank 1 registered again"), std::string::npos)
      << again.ToString();
}

// A multi-node CUDA job's pipeline gets the NCCL side of its rendezvous, the groups'
// reductions and layout hash; a new generation closes it and asks the worker to register again.
TEST(JobGpuTest, MultiNodeCudaJobsGetTheirRendezvousCommunicator) {
  int live = 0;
  GpuJobSpec seen;
  Job job("nodes-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, &seen));
  v1::RendezvousInfo info;
  info.set_store_address("127.0.0.1:1");  // Gloo connects on first use, which never comes
  info.set_node_count(4);
  auto gloo = std::make_shared<GlooCollective>(info, 1, "127.0.0.1");
  FakeCudaWorker worker;

  job.SetCollective(gloo, "generation-1");  // a rendezvous made without cuda=true
  absl::Status refused = worker.Register(&job);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("cuda=true"), std::string::npos) << refused;

  NcclRendezvous nccl{std::string(kNcclUniqueIdBytes, 'n'), 1, 4, absl::Seconds(7)};
  job.SetCollective(gloo, "generation-2", nccl);
  ASSERT_TRUE(worker.Register(&job).ok());
  EXPECT_EQ(live, 1);
  EXPECT_EQ(seen.job, "nodes-job");
  EXPECT_EQ(seen.nccl.unique_id, nccl.unique_id);
  EXPECT_EQ(seen.nccl.node_rank, 1u);
  EXPECT_EQ(seen.nccl.node_count, 4u);
  EXPECT_EQ(seen.nccl.timeout, absl::Seconds(7));
  EXPECT_EQ(seen.modes, std::vector<uint8_t>{0});
  const std::vector<std::string> names = {"w"};
  const std::vector<int> reductions = {0};
  EXPECT_EQ(seen.layout_hash, LayoutHash(names, reductions));
  // The first step agrees the group count through the node collective before any NCCL
  // call; here no other node exists, so it fails (in time) and nothing is enqueued.
  v1::StepResponse r;
  const absl::Time start = absl::Now();
  absl::Status alone = job.Step(0, 1, absl::Seconds(1), &r, NextReady());
  EXPECT_FALSE(alone.ok());
  EXPECT_NE(alone.message().find("other nodes"), std::string::npos) << alone;
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));

  job.SetCollective(gloo, "generation-3", nccl);
  EXPECT_EQ(live, 0);  // the old communicator's pipeline is closed
  absl::Status again = job.Step(0, 2, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("new rendezvous, which ends the job's GPU communicator: "
                                 "register the buffers again"),
            std::string::npos)
      << again;
  // Registering again ends the generation (the worker's library has let go of its old
  // registration first; the other workers hear of it at once), and the rendezvous's NCCL id
  // serves no other: refused, saying how to go on.
  ASSERT_TRUE(worker.Register(&job).ok());
  EXPECT_EQ(live, 1);
  absl::Status twice = worker.Register(&job);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(twice.message().find("has ended and its NCCL id cannot be used again"),
            std::string::npos)
      << twice;
  EXPECT_EQ(live, 0);
}

// When the nodes disagree on the step or layout, the GPU marks the step kFlagMismatch and the
// worker hears of it as INVALID_ARGUMENT with the step it happened at; never from a Step that
// enqueued its step (the worker would not wait for that step's done word).
TEST(JobGpuTest, NodesThatDisagreeAreReported) {
  int live = 0;
  Job job("split-job", RuleParams{}, 1, nullptr, nullptr,
          LaggingBackend(&live, kFlagMismatch | kFlagSkipped));
  FakeCudaWorker worker;
  ASSERT_TRUE(worker.Register(&job).ok());
  v1::StepResponse r;
  ASSERT_TRUE(
      job.Step(0, 1, absl::Seconds(1), &r, NextReady()).ok());  // its results are not in yet
  // Step 2 is enqueued, then step 1's results show the disagreement: answered, skipped.
  ASSERT_TRUE(job.Step(0, 2, absl::Seconds(1), &r, NextReady()).ok());
  EXPECT_EQ(r.results_step(), 1u);
  EXPECT_TRUE(r.skip());
  EXPECT_NE(r.not_applied().find("nodes disagreed on the step number or the norm-group layout"),
            std::string::npos)
      << r.not_applied();
  absl::Status s = job.Step(0, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("differ across the nodes of job 'split-job' (found at step 1)"),
            std::string::npos)
      << s;
  EXPECT_NE(s.message().find("step 3 was not taken"), std::string::npos) << s;
  // Nothing was enqueued for it: step 3 can still be taken (reported once).
  EXPECT_TRUE(job.Step(0, 3, absl::Seconds(1), &r, NextReady()).ok());
}

// Several local workers, one GPU each: every one a rank of one communicator per generation;
// they step once all have registered; one registering again starts a new generation.
TEST(JobGpuTest, LocalGpusShareOneCommunicatorPerGeneration) {
  int live = 0;
  GpuJobSpec seen;
  Job job("gpus-job", RuleParams{}, 2, nullptr, nullptr, LaggingBackend(&live, 0, &seen));
  FakeCudaWorker w0, w1;
  ASSERT_TRUE(w0.Register(&job, 0, /*device=*/0).ok());
  EXPECT_EQ(seen.nccl.unique_id, Id(1));
  EXPECT_EQ(seen.nccl.node_rank, 0u);
  EXPECT_EQ(seen.nccl.node_count, 2u);
  v1::StepResponse r;
  absl::Status early = job.Step(0, 1, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(early.message().find("local rank(s) 1 of job 'gpus-job' have not registered"),
            std::string::npos)
      << early;
  absl::Status same_gpu = w1.Register(&job, 1, /*device=*/0);
  EXPECT_EQ(same_gpu.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(same_gpu.message().find("both use GPU 0"), std::string::npos) << same_gpu;
  ASSERT_TRUE(w1.Register(&job, 1, /*device=*/1).ok());
  EXPECT_EQ(seen.nccl.unique_id, Id(1));  // the same communicator
  EXPECT_EQ(seen.nccl.node_rank, 1u);
  EXPECT_EQ(live, 2);
  for (uint64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(job.Step(0, step, absl::Seconds(1), &r, NextReady()).ok());
    ASSERT_TRUE(job.Step(1, step, absl::Seconds(1), &r, NextReady()).ok());
  }
  EXPECT_EQ(r.results_step(), 2u);  // local rank 1's own pipeline answers for it
  EXPECT_EQ(job.Step(1, 3, absl::Seconds(1), &r, NextReady()).code(),
            absl::StatusCode::kInvalidArgument);
  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.steps(), 3u);  // counted once per step, not once per GPU
  // GPUs stepping together: an export takes the newest finished step's copy (step 2 here)
  // instead of waiting, and an import is refused while they are registered.
  EXPECT_EQ(job.ExportState().groups(0).t(), 2u);
  absl::Status import = job.ImportState(job.ExportState(), false);
  EXPECT_EQ(import.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(import.message().find("import them before its workers register"), std::string::npos)
      << import;

  // Local rank 0 registers again: a new communicator, and local rank 1 must register too.
  ASSERT_TRUE(w0.Register(&job, 0, 0).ok());
  EXPECT_EQ(live, 1);
  EXPECT_EQ(seen.nccl.unique_id, Id(2));
  absl::Status again = job.Step(1, 4, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("local rank 0 registered again"), std::string::npos) << again;
  ASSERT_TRUE(w1.Register(&job, 1, 1).ok());
  EXPECT_EQ(seen.nccl.unique_id, Id(2));
  ASSERT_TRUE(job.Step(0, 4, absl::Seconds(1), &r, NextReady()).ok());
  v1::GetStatsResponse after;
  job.GetStats(&after);
  EXPECT_EQ(after.groups(0).accepted_steps(), 3u);  // the statistics outlived the generation

  // A local worker that leaves ends the generation as well.
  job.RemoveWorker(1);
  EXPECT_EQ(live, 0);
  absl::Status left = job.Step(0, 5, absl::Seconds(1), &r, NextReady());
  EXPECT_NE(left.message().find("local rank 1 left"), std::string::npos) << left;
}

// The local GPUs must hold the same groups: their collectives have the group count's size.
TEST(JobGpuTest, LocalGpusWithDifferentGroupsAreRefusedBeforeAnyCollective) {
  int live = 0;
  Job job("split-groups", RuleParams{}, 2, nullptr, nullptr, LaggingBackend(&live));
  FakeCudaWorker w0, w1;
  w1.tensor = "v";  // a second group
  ASSERT_TRUE(w0.Register(&job, 0, 0).ok());
  ASSERT_TRUE(w1.Register(&job, 1, 1).ok());
  v1::StepResponse r;
  absl::Status s = job.Step(0, 1, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("registered different norm groups (1 and 2)"), std::string::npos) << s;
}

// On several nodes the ranks are node_rank * local_world_size + local_rank of
// node_count * local_world_size, in the rendezvous's communicator.
TEST(JobGpuTest, GpuRanksSpanTheNodes) {
  int live = 0;
  GpuJobSpec seen;
  Job job("wide-job", RuleParams{}, 2, nullptr, nullptr, LaggingBackend(&live, 0, &seen));
  v1::RendezvousInfo info;
  info.set_store_address("127.0.0.1:1");
  info.set_node_count(3);
  job.SetCollective(std::make_shared<GlooCollective>(info, 1, "127.0.0.1"), "g1",
                    NcclRendezvous{std::string(kNcclUniqueIdBytes, 'r'), 1, 3, absl::Seconds(9)});
  FakeCudaWorker w1;
  ASSERT_TRUE(w1.Register(&job, 1, 5).ok());
  EXPECT_EQ(seen.nccl.unique_id, std::string(kNcclUniqueIdBytes, 'r'));
  EXPECT_EQ(seen.nccl.node_rank, 3u);
  EXPECT_EQ(seen.nccl.node_count, 6u);
  EXPECT_EQ(seen.nccl.timeout, absl::Seconds(9));
}

// A worker's GPU ordinal is its own (CUDA_VISIBLE_DEVICES); gstabd maps it by UUID to its own.
TEST(JobGpuTest, WorkersGpusAreFoundByUuid) {
  float grads[1000];
  v1::RegisterBuffersRequest request = CudaRequest(grads, 0);  // the worker sees one GPU
  v1::Buffer* b = request.mutable_buffers(0);
  std::string uuid = "GPU-3";
  uuid.resize(16, '\0');
  b->set_device_uuid(uuid);
  const RegistrationCaps caps = CudaCaps();
  HostDeviceMemory memory;
  MappingRegistry registry;
  absl::StatusOr<MappedRegistration> mapped =
      MapRegistration(*ValidateRegistration(request, caps), &registry, &memory);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->plan.cuda_device, 3);  // gstabd's ordinal of that GPU
  b->set_device_uuid("short");
  absl::Status bad = ValidateRegistration(request, caps).status();
  EXPECT_NE(bad.message().find("device_uuid is 5 bytes"), std::string::npos) << bad;
  std::string other = "XPU-0";
  other.resize(16, '\0');
  b->set_device_uuid(other);
  EXPECT_FALSE(MapRegistration(*ValidateRegistration(request, caps), &registry, &memory).ok());
}

// Two buffers whose handles differ but open one memory (bytes a driver ignores): their tensors
// are compared by address, and the registration is refused rather than counted and scaled twice.
TEST(JobGpuTest, TwoHandlesOfOneMemoryAreRefused) {
  float grads[1000];
  v1::RegisterBuffersRequest request = CudaRequest(grads, 0, "a");
  v1::Buffer* twin = request.add_buffers();
  *twin = request.buffers(0);
  std::string handle = twin->ipc_handle();
  handle[63] = 1;  // past the address: the same memory to HostDeviceMemory
  twin->set_ipc_handle(handle);
  v1::Tensor* t = request.add_tensors();
  t->set_name("b");
  t->set_numel(10);
  t->set_buffer(1);
  t->set_offset(990);
  HostDeviceMemory memory;
  MappingRegistry registry;
  absl::StatusOr<MappedRegistration> mapped =
      MapRegistration(*ValidateRegistration(request, CudaCaps()), &registry, &memory);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  MemoryClaims claims;
  const absl::Status refused = ClaimMemory("j", &claims, &*mapped);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("tensor 1 ('b') shares memory with tensor 0 ('a') of the same "
                                   "registration"),
            std::string::npos)
      << refused;
}

// A worker that registers host memory in place of its own CUDA registration goes on on the host
// pipeline, the GPU's statistics with it; while another local rank runs on the GPU, it is refused.
TEST(JobGpuTest, AWorkersHostRegistrationReplacesItsOwnCudaOne) {
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  v1::StepResponse response;
  ASSERT_TRUE(one.job.Step(0, 1, absl::Seconds(1), &response, NextReady()).ok());
  ASSERT_TRUE(one.job.Step(0, 2, absl::Seconds(1), &response, NextReady()).ok());
  CpuWorker host;
  ASSERT_TRUE(host.Register(&one.job, 0).ok());
  EXPECT_EQ(one.live, 0);  // the GPU generation ended
  ASSERT_TRUE(one.job.Step(0, 3, absl::Seconds(1), &response).ok());
  v1::GetStatsResponse stats;
  one.job.GetStats(&stats);
  ASSERT_EQ(stats.groups_size(), 1);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 3u);  // two on the GPU, then one on the host

  int live = 0;
  FakeGpu gpu;
  Job two{"gpu-pair", RuleParams{}, 2, nullptr, nullptr, LaggingBackend(&live, 0, nullptr, &gpu)};
  FakeCudaWorker cuda;
  ASSERT_TRUE(cuda.Register(&two, 0).ok());
  CpuWorker other;
  absl::Status mixed = other.Register(&two, 1);
  EXPECT_EQ(mixed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mixed.message().find("other local ranks run on the CUDA pipeline"), std::string::npos)
      << mixed;
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
  RegistrationCaps caps;
  caps.cuda_ipc = true;
  absl::Status mixed = ValidateRegistration(request, caps).status();
  EXPECT_NE(mixed.message().find("buffers[1] differs from buffers[0] in its transport: a "
                                 "registration's buffers must all be cuda_ipc on one device"),
            std::string::npos)
      << mixed;
  // Two GPUs' memory: which of their fields differs is named.
  request.mutable_buffers(1)->set_transport(v1::TRANSPORT_CUDA_IPC);
  request.mutable_buffers(1)->set_ipc_handle(std::string(64, 'i'));
  request.mutable_buffers(1)->set_device(1);
  absl::Status devices = ValidateRegistration(request, caps).status();
  EXPECT_NE(devices.message().find("buffers[1] differs from buffers[0] in its device ordinal"),
            std::string::npos)
      << devices;
}

}  // namespace
}  // namespace gstab
