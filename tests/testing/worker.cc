#include "tests/testing/worker.h"

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/rule.h"
#include "kernels/cpu_kernels.h"
#include "kernels/half.h"

namespace gstab::testing {
namespace {

struct Spec {
  const char* name;
  uint64_t numel;
  DType dtype;
  const char* group;
  uint32_t group_index;
};
constexpr Spec kLayout[] = {{"a", 1000, DType::kFloat32, "g", 0},
                            {"b", 777, DType::kBFloat16, "g", 0},
                            {"c", 50, DType::kFloat16, "", 1},
                            {"d", 70001, DType::kFloat32, "big", 2}};

}  // namespace

AttachOptions JobOptions(const std::string& name, v1::PolicyConfig config) {
  AttachOptions o;
  o.job = name;
  o.config = std::move(config);
  return o;
}

absl::StatusOr<std::unique_ptr<TestWorker>> TestWorker::Create(const std::string& socket,
                                                               const AttachOptions& options) {
  auto w = std::unique_ptr<TestWorker>(new TestWorker);
  for (const Spec& s : kLayout) w->arena_.AddTensor(s.name, s.numel, s.dtype, s.group);
  if (absl::Status st = w->arena_.Allocate(); !st.ok()) return st;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(socket);
  if (!client.ok()) return client.status();
  w->client_ = *std::move(client);
  if (absl::Status st = w->client_->Attach(options); !st.ok()) return st;
  if (absl::Status st = w->client_->Register(w->arena_); !st.ok()) return st;
  return w;
}

void TestWorker::Fill(uint64_t step, uint32_t seed, float factor) {
  std::mt19937 rng(seed * 1000003u + static_cast<uint32_t>(step));
  std::normal_distribution<float> d(0.0f, 0.1f);
  for (size_t t = 0; t < arena_.num_tensors(); ++t) {
    for (uint64_t i = 0; i < kLayout[t].numel; ++i) {
      const float v = d(rng) * factor;
      void* p = arena_.data(t);
      switch (kLayout[t].dtype) {
        case DType::kFloat32:
          static_cast<float*>(p)[i] = v;
          break;
        case DType::kBFloat16:
          static_cast<uint16_t*>(p)[i] = FloatToBFloat16(v);
          break;
        case DType::kFloat16:
          static_cast<uint16_t*>(p)[i] = FloatToFloat16(v);
          break;
      }
    }
  }
}

std::vector<unsigned char> TestWorker::Bytes() const {
  const auto* base = static_cast<const unsigned char*>(arena_.data(0));
  return std::vector<unsigned char>(base, base + arena_.tensor_bytes());
}

absl::Status StepNonFinite(TestWorker& worker, uint64_t steps) {
  for (uint64_t step = 1; step <= steps; ++step) {
    worker.Fill(step, 1);
    static_cast<float*>(worker.arena().data(0))[0] = NAN;
    absl::StatusOr<v1::StepResponse> r = worker.client().Step(step);
    if (!r.ok())
      return absl::Status(r.status().code(),
                          absl::StrCat("step ", step, ": ", r.status().message()));
    if (!r->skip()) return absl::InternalError(absl::StrCat("step ", step, " was not skipped"));
  }
  return absl::OkStatus();
}

bool WaitForArrivals(Client* client, const std::vector<uint32_t>& ranks) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::GetStatsResponse> s = client->GetStats();
    if (s.ok() && !s->arrived_local_ranks().empty() &&
        std::vector<uint32_t>(s->arrived_local_ranks().begin(), s->arrived_local_ranks().end()) ==
            ranks) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

absl::Status StepWithToken(Client* client, const std::string& token, uint64_t step) {
  grpc::ClientContext ctx;
  v1::StepRequest request;
  request.set_session(token);
  request.set_step(step);
  v1::StepResponse response;
  return FromGrpcStatus(client->stub()->Step(&ctx, request, &response));
}

namespace {

// The chunk table of a TestWorker layout over `bytes` (the worker's arena or a copy of it).
ChunkTable LayoutTable(const TestWorker& worker, unsigned char* bytes) {
  const auto* base = static_cast<const unsigned char*>(worker.arena().data(0));
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < 4; ++t) {
    const auto offset = static_cast<const unsigned char*>(worker.arena().data(t)) - base;
    chunks.push_back(Chunk{bytes + offset, static_cast<int64_t>(kLayout[t].numel), kLayout[t].dtype,
                           kLayout[t].group_index});
  }
  return *ChunkTable::Create(chunks, 3);
}

}  // namespace

std::vector<double> GroupSums(const TestWorker& worker) {
  ChunkTable table = LayoutTable(
      worker,
      const_cast<unsigned char*>(static_cast<const unsigned char*>(worker.arena().data(0))));
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table));
  std::vector<double> sums(3);
  std::vector<uint32_t> flags(3);
  (void)CpuGroupSumSquares(table, absl::MakeSpan(scratch), absl::MakeSpan(sums),
                           absl::MakeSpan(flags), nullptr);
  return sums;
}

std::vector<unsigned char> ScaledBytes(const TestWorker& worker, std::vector<unsigned char> bytes,
                                       const v1::StepResponse& response) {
  ChunkTable table = LayoutTable(worker, bytes.data());
  float scales[3] = {1.0f, 1.0f, 1.0f};
  for (int g = 0; g < 3 && g < response.groups_size(); ++g) {
    scales[g] = static_cast<float>(response.groups(g).scale());
  }
  (void)CpuScaleGroups(table, scales, nullptr);
  return bytes;
}

void Reference::set_params(const RuleParams& params) {
  for (GroupStats& s : stats_) RescaleStabilizerEmas(params_, params, &s);
  params_ = params;
}

ReferenceStep Reference::Step(const TestWorker& worker) {
  ReferenceStep out;
  out.bytes = worker.Bytes();
  ChunkTable table = LayoutTable(worker, out.bytes.data());
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table));
  double sums[3];
  uint32_t flags[3];
  (void)CpuGroupSumSquares(table, absl::MakeSpan(scratch), sums, flags, nullptr);
  float scales[3];
  const bool step_non_finite = flags[0] != 0 || flags[1] != 0 || flags[2] != 0;
  for (int g = 0; g < 3; ++g) {
    out.outcomes.push_back(
        ApplyRuleInStep(params_, &stats_[g], sums[g], flags[g] != 0, step_non_finite));
    scales[g] = static_cast<float>(out.outcomes.back().scale);
  }
  (void)CpuScaleGroups(table, scales, nullptr);
  return out;
}

}  // namespace gstab::testing
