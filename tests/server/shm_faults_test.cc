// SIGBUS on a worker's shared memory costs that object, never gstabd: the touch goes on, reading
// zeros, and the mapping says it is lost. A SIGBUS anywhere else still ends the process.
#include "server/shm_faults.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "client_lib/arena.h"
#include "gtest/gtest.h"
#include "kernels/chunk_table.h"
#include "kernels/cpu_executor.h"
#include "kernels/cpu_kernels.h"
#include "server/shm_mapping.h"

namespace gstab {
namespace {

// A worker's arena of `numel` fp32 elements, every one 1.0f.
std::unique_ptr<GradientArena> Arena(uint64_t numel) {
  auto arena = std::make_unique<GradientArena>();
  arena->AddTensor("w", numel, DType::kFloat32);
  EXPECT_TRUE(arena->Allocate().ok());
  auto* data = static_cast<float*>(arena->data(0));
  for (uint64_t i = 0; i < numel; ++i) data[i] = 1.0f;
  return arena;
}

TEST(ShmFaultsTest, ATouchOfATruncatedObjectLosesThatObjectOnly) {
  constexpr uint64_t kNumel = 1 << 20;  // 4 MiB
  auto victim = Arena(kNumel);
  auto bystander = Arena(kNumel);
  MappingRegistry registry;
  absl::StatusOr<std::shared_ptr<ShmMapping>> lost = registry.Acquire(victim->shm_name());
  absl::StatusOr<std::shared_ptr<ShmMapping>> kept = registry.Acquire(bystander->shm_name());
  ASSERT_TRUE(lost.ok()) << lost.status();
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_TRUE((*lost)->CheckSize().ok());

  // Truncated after the step's check: the touch past the new end raises SIGBUS.
  const int fd = shm_open(victim->shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  volatile unsigned char* bytes = (*lost)->data();
  const size_t last = (*lost)->size() - 1;
  EXPECT_EQ(bytes[last], 0);  // survived, and read a zero
  bytes[last] = 7;            // and a write goes somewhere harmless
  EXPECT_EQ(bytes[last], 7);
  // Before the lost page, gstabd's mapping is still the worker's memory.
  static_cast<float*>(victim->data(0))[0] = 2.0f;
  EXPECT_EQ(reinterpret_cast<const float*>((*lost)->data())[0], 2.0f);

  EXPECT_TRUE((*lost)->Lost());
  // The kernels see the loss (Chunk::lost) and scale none of the object's tiles: each page they
  // wrote past the loss would be a private page of gstabd's (up to the whole object, a worker's
  // --max_bytes). Of the pages past the first, only the one this test wrote is resident.
  ASSERT_NE((*lost)->lost_count(), nullptr);
  EXPECT_NE((*lost)->lost_count()->load(), 0u);
  EXPECT_EQ((*kept)->lost_count()->load(), 0u);
  {
    CpuExecutor executor(2);
    absl::StatusOr<ChunkTable> table =
        ChunkTable::Create({Chunk{(*lost)->data(), static_cast<int64_t>(kNumel), DType::kFloat32, 0,
                                  (*lost)->lost_count()}},
                           1);
    ASSERT_TRUE(table.ok()) << table.status();
    const float half[] = {0.5f};
    ASSERT_TRUE(CpuScaleGroups(*table, half, &executor).ok());
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t pages = (*lost)->size() / page - 1;
    std::vector<unsigned char> resident(pages);
    ASSERT_EQ(mincore((*lost)->data() + page, pages * page, resident.data()), 0) << errno;
    size_t count = 0;
    for (unsigned char r : resident) count += r & 1;
    EXPECT_LE(count, 1u) << "of " << pages << " pages past the first";
  }
  const absl::Status refused = (*lost)->CheckSize();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("(SIGBUS)"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("register the gradients again"), std::string::npos) << refused;
  EXPECT_FALSE((*lost)->IsCurrent());

  EXPECT_FALSE((*kept)->Lost());
  EXPECT_TRUE((*kept)->CheckSize().ok());
  const auto* kept_floats = reinterpret_cast<const float*>((*kept)->data());
  EXPECT_EQ(kept_floats[kNumel - 1], 1.0f);

  // The lost object is mapped anew when asked again (its worker registers again), and a
  // mapping taking the freed slot starts clean.
  const ShmMapping* before = lost->get();
  absl::StatusOr<std::shared_ptr<ShmMapping>> again = registry.Acquire(victim->shm_name());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->get(), before);
  lost->reset();
  again->reset();
  auto next = Arena(1024);
  absl::StatusOr<std::shared_ptr<ShmMapping>> fresh = registry.Acquire(next->shm_name());
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_FALSE((*fresh)->Lost());
}

// A file gstabd maps that is no worker's (a library truncated under it, say): SIGBUS there is
// not survived, and the process says so on its way out.
TEST(ShmFaultsDeathTest, ASigbusOutsideWorkersMemoryStillEndsTheProcess) {
  EXPECT_EXIT(
      {
        ShmFaults::Install();
        char path[] = "/tmp/gstab-sigbus-XXXXXX";
        const int fd = mkstemp(path);
        if (fd < 0 || ftruncate(fd, 8192) != 0) std::abort();
        auto* p = static_cast<volatile unsigned char*>(
            mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        if (p == MAP_FAILED || ftruncate(fd, 0) != 0) std::abort();
        unlink(path);
        p[4096] = 1;
      },
      ::testing::KilledBySignal(SIGBUS), "SIGBUS outside any worker's shared memory");
}

// A SIGBUS sent by a process (kill -BUS) has no address to look up: it ends gstabd, as before.
TEST(ShmFaultsDeathTest, ASigbusSentByAProcessEndsIt) {
  EXPECT_EXIT(
      {
        ShmFaults::Install();
        raise(SIGBUS);
      },
      ::testing::KilledBySignal(SIGBUS), "SIGBUS outside any worker's shared memory");
}

}  // namespace
}  // namespace gstab
