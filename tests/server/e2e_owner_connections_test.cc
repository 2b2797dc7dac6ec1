// Jobs by uid: one uid's connections to the socket are capped (--max_connections_per_uid), not
// the others', and the refused process is told why; gstabd's probes on --health_socket are
// outside that cap.
#include <signal.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/owner_fixture.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

using testing::OwnerTest;

// One uid holding its --max_connections_per_uid connections open cannot open another, and
// takes none from the others; its connections count again once it closes them.
TEST_F(OwnerTest, AUidAtItsConnectionCapIsRefusedAndOthersAreNot) {
  SKIP_UNLESS_ROOT();
  Restart({"--max_connections_per_uid=3", "--metrics_port=0"});
  absl::StatusOr<testing::Subprocess> holder = HoldConnections(65534, 3);
  ASSERT_TRUE(holder.ok()) << holder.status();

  // Told why, rather than waiting out its timeout to hear that no gstabd answers.
  auto [rc, out] = Ctl(65534, "--timeout_s=120 status");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("refused this process's connection: uid 65534 already holds 3 connections, "
                     "its cap (--max_connections_per_uid)"),
            std::string::npos)
      << out;
  EXPECT_TRUE(
      daemon_->WaitForLog("uid 65534 already holds 3 connections, its cap "
                          "(--max_connections_per_uid)"))
      << daemon_->Log();
  // Another uid is not refused, and neither is the same uid once its connections are closed.
  std::tie(rc, out) = Ctl(65533, "status");
  EXPECT_EQ(rc, 0) << out;
  holder->Signal(SIGKILL);
  ASSERT_TRUE(holder->Wait(absl::Seconds(10)).ok());
  for (int i = 0; i < 20; ++i) {  // until gRPC has closed the connections (it polls)
    std::tie(rc, out) = Ctl(65534, "status");
    if (rc == 0) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(rc, 0) << out;

  absl::StatusOr<int> port = daemon_->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  absl::StatusOr<testing::HttpResponse> metrics = testing::HttpRequest(*port, "GET", "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->body.find("gstab_connections_refused_total{reason=\"per_uid_cap\"} 0"),
            std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("gstab_connections_refused_total{reason=\"per_uid_cap\"}"),
            std::string::npos)
      << metrics->body;
}

// gstabd's probes run as a uid whose workers may hold that uid's --max_connections_per_uid (root,
// in the chart): on --health_socket they are outside that cap, so a leaking client does not have
// its node's gstabd restarted. Only gstabd's uid and root may use that socket.
TEST_F(OwnerTest, ProbesOnTheHealthSocketPassWhileTheirUidIsAtItsCap) {
  SKIP_UNLESS_ROOT();
  const std::string probe = dir_.path() + "/probe/gstabd.sock";
  Restart({"--max_connections_per_uid=3", "--health_socket=" + probe});
  absl::StatusOr<testing::Subprocess> holder = HoldConnections(0, 3);
  ASSERT_TRUE(holder.ok()) << holder.status();
  auto [rc, out] = Ctl(0, "health");
  EXPECT_NE(rc, 0) << out;  // the main socket: root is at its cap
  std::tie(rc, out) = As(0, "gstabctl --socket=" + probe + " health");
  EXPECT_EQ(rc, 0) << out;
  ::chmod(probe.c_str(), 0666);  // past the mode, the allow-list still keeps others out
  std::tie(rc, out) = As(65534, "gstabctl --socket=" + probe + " --timeout_s=120 health");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("refused this process's connection: uid 65534 gid 65534 is not in the "
                     "probe socket's allow-list (gstabd's own uid and root)"),
            std::string::npos)
      << out;
  EXPECT_TRUE(daemon_->WaitForLog("not in the probe socket's allow-list")) << daemon_->Log();
  holder->Signal(SIGKILL);
}

// The cap on event streams over every caller (--max_event_streams_total) counts every caller's:
// root's two followed streams fill it, and another uid, with none open, is refused.
TEST_F(OwnerTest, EveryCallersEventStreamsCountTowardTheTotalCap) {
  SKIP_UNLESS_ROOT();
  Restart({"--max_event_streams=4", "--max_event_streams_total=2"});
  auto worker = testing::TestWorker::Create(daemon_->socket(), testing::JobOptions("streamed"));
  ASSERT_TRUE(worker.ok()) << worker.status();  // its ATTACH: each stream's first line
  std::vector<testing::Subprocess> followers;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<testing::Subprocess> follower = testing::Subprocess::Start(
        {testing::BinaryPath("tools/gstabctl"), "--socket=" + daemon_->socket(), "events",
         "--follow", "--recent=1"});
    ASSERT_TRUE(follower.ok()) << follower.status();
    ASSERT_TRUE(follower->ReadLine(absl::Seconds(30)).ok()) << "stream " << i;
    followers.push_back(*std::move(follower));
  }
  auto [rc, out] = Ctl(65534, "events --recent=1");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("its cap over every caller (--max_event_streams_total)"), std::string::npos)
      << out;
  for (testing::Subprocess& f : followers) f.Signal(SIGTERM);
}

// Other callers together leave part of the total cap to operators: their streams do not lock
// an operator's `gstabctl events` out, also where every caller acts on every job
// (--jobs_by_uid=false).
TEST_F(OwnerTest, OperatorsKeepEventStreamsOtherCallersCannotTake) {
  SKIP_UNLESS_ROOT();
  for (const bool by_uid : {true, false}) {
    SCOPED_TRACE(by_uid ? "jobs by uid" : "--jobs_by_uid=false");
    Restart({"--max_event_streams=2", "--max_event_streams_total=8",  // 2 kept for operators
             by_uid ? "--jobs_by_uid=true" : "--jobs_by_uid=false"});
    auto worker = testing::TestWorker::Create(daemon_->socket(), testing::JobOptions("streamed"));
    ASSERT_TRUE(worker.ok()) << worker.status();  // its ATTACH: each stream's first line
    std::vector<testing::Subprocess> followers;
    for (int uid : {65534, 65533, 65532}) {
      for (int i = 0; i < 2; ++i) {
        const std::string id = std::to_string(uid);
        absl::StatusOr<testing::Subprocess> follower = testing::Subprocess::Start(
            {"/usr/bin/setpriv", "--reuid=" + id, "--regid=" + id, "--clear-groups",
             dir_.path() + "/gstabctl", "--socket=" + daemon_->socket(), "events", "--follow",
             "--recent=1"});
        ASSERT_TRUE(follower.ok()) << follower.status();
        ASSERT_TRUE(follower->ReadLine(absl::Seconds(30)).ok()) << "uid " << uid << " stream " << i;
        followers.push_back(*std::move(follower));
      }
    }
    auto [rc, out] = Ctl(65531, "events --recent=1");
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("(--max_event_streams_total) less the 2 it keeps for operators"),
              std::string::npos)
        << out;
    std::tie(rc, out) = Ctl(0, "events --recent=1");
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("ATTACH"), std::string::npos) << out;
    for (testing::Subprocess& f : followers) f.Signal(SIGTERM);
  }
}

}  // namespace
}  // namespace gstab
