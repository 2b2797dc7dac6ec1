// A gstabd of its own for each test (metrics on a free port), the example trainer run against
// it to completion, and gstabctl run against it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace gstab::testing {

class TrainerDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(dir_.path(), {"--metrics_port=0"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
    auto port = daemon_->MetricsPort();
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  // Runs the trainer to completion; returns its output.
  std::string Train(const std::string& job, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {testing::BinaryPath("examples/mlp_trainer"),
                                     "--socket=" + daemon_->socket(), "--job=" + job};
    argv.insert(argv.end(), extra.begin(), extra.end());
    absl::StatusOr<Subprocess> p = Subprocess::Start(argv);
    EXPECT_TRUE(p.ok());
    std::string out = p->ReadAll();
    EXPECT_EQ(p->Wait(absl::Seconds(60)).value_or(-1), 0) << out;
    return out;
  }

  std::pair<int, std::string> Ctl(const std::string& args) {
    return testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                             " --socket=" + daemon_->socket() + " " + args);
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  int port_ = 0;
};

}  // namespace gstab::testing
