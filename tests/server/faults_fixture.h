// The gstabd that bad-input and fault tests run against: short lease and step timeout (1 s,
// 3 s: long enough for a test's second local worker to attach while the first one's step
// waits, on a loaded machine), at most 100 tensors a registration, so that refusals and
// expiries come fast.
#pragma once

#include <memory>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab::testing {

class FaultsFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(
        dir_.path(), {"--lease_ms=1000", "--max_tensors=100", "--step_timeout_ms=3000"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
  }

  // A step of `worker` succeeds: the daemon still serves.
  static void ExpectServing(TestWorker* worker, uint64_t step) {
    worker->Fill(step, 1);
    absl::StatusOr<v1::StepResponse> r = worker->client().Step(step);
    EXPECT_TRUE(r.ok()) << r.status();
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

}  // namespace gstab::testing
