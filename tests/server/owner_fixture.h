// The fixture of the jobs-by-uid tests (e2e_owner_test.cc, e2e_owner_connections_test.cc):
// a gstabd whose socket, folder and copies of the trainer and gstabctl other uids reach, and
// those binaries run as other uids through setpriv (which needs root).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace testing {

constexpr char kRefused[] = "belongs to uid 65534";

// The tests run the trainer and gstabctl as other uids (setpriv), which needs root.
#define SKIP_UNLESS_ROOT() \
  if (geteuid() != 0) GTEST_SKIP() << "runs processes as other uids (setpriv), which needs root"

class OwnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Reachable by the other users: the folder, the socket, and copies of the binaries.
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    for (const char* binary : {"examples/mlp_trainer", "tools/gstabctl"}) {
      const std::string to = dir_.path() + "/" + std::filesystem::path(binary).filename().string();
      std::filesystem::copy_file(testing::BinaryPath(binary), to);
      ASSERT_EQ(::chmod(to.c_str(), 0755), 0);
    }
    Start({});
  }
  void Start(const std::vector<std::string>& flags) {
    auto d = DaemonProcess::Start(dir_.path(), flags);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
    ASSERT_EQ(::chmod(daemon_->socket().c_str(), 0666), 0);
  }
  void Restart(const std::vector<std::string>& flags) {
    ASSERT_TRUE(daemon_->Stop().ok());  // SIGTERM: checkpoints written
    daemon_.reset();
    Start(flags);
  }
  // `command` of the copied binaries as uid:gid `uid`: its exit code and output.
  std::pair<int, std::string> As(int uid, const std::string& command) {
    return testing::RunShell("cd " + dir_.path() + " && setpriv --reuid=" + std::to_string(uid) +
                             " --regid=" + std::to_string(uid) + " --clear-groups ./" + command +
                             " 2>&1");
  }
  std::pair<int, std::string> Ctl(int uid, const std::string& args) {
    return As(uid, "gstabctl --socket=" + daemon_->socket() + " " + args);
  }
  // A process of uid:gid `uid` holding `count` connections to the socket open, once it holds them.
  absl::StatusOr<testing::Subprocess> HoldConnections(int uid, int count) {
    const std::string hold = absl::StrCat(
        "import socket, sys, time\n"
        "held = [socket.socket(socket.AF_UNIX) for _ in range(",
        count, ")]\n",
        "for s in held: s.connect(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n");
    const std::string id = std::to_string(uid);
    absl::StatusOr<testing::Subprocess> holder = testing::Subprocess::Start(
        {"/usr/bin/setpriv", "--reuid=" + id, "--regid=" + id, "--clear-groups", "/usr/bin/python3",
         "-c", hold, daemon_->socket()});
    if (!holder.ok()) return holder.status();
    absl::StatusOr<std::string> line = holder->ReadLine(absl::Seconds(30));
    if (!line.ok() || *line != "held") {
      return absl::InternalError(
          absl::StrCat("the connections were not held: ",
                       line.ok() ? *line : std::string(line.status().message())));
    }
    return holder;
  }
  std::pair<int, std::string> Train(int uid, const std::string& job) {
    return As(uid, "mlp_trainer --socket=" + daemon_->socket() + " --job=" + job +
                       " --steps=3 --spike_steps=2 --print_every=1000");
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

}  // namespace testing
}  // namespace gstab
