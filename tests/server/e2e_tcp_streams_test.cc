// gstabd's TCP port (--listen) and what its callers may hold there: event streams whose reader
// stopped reading (ended after --event_write_timeout_s, or by the stop), and a job's observer
// places, of which operators keep some of their own.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "client_lib/client.h"
#include "client_lib/transport.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_tls.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::TcpDaemon;
using testing::TempDir;
using testing::TestTls;
using testing::TestWorker;
using testing::TlsEnvironment;

// A job's observer places held by others (with --jobs_by_uid=false, anyone admitted may
// observe any job) leave operators places of their own: root's `gstabctl` still reaches it.
TEST(TcpTest, ObserversOfOthersLeaveOperatorsAPlace) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  const TestTls ops = testing::MakeClientCertificate(dir.path(), "ops", "/CN=gstab-ops");
  const TestTls alice = testing::MakeClientCertificate(dir.path(), "alice", "/CN=alice");
  TcpDaemon tcp(dir.path(), tls, {"--tls_operators=gstab-ops", "--jobs_by_uid=false"});
  ASSERT_FALSE(tcp.address().empty());
  auto worker = TestWorker::Create(tcp.daemon().socket(), testing::JobOptions("crowded"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  AttachOptions observer = testing::JobOptions("crowded");
  observer.observer = true;
  TlsEnvironment env(alice);
  std::vector<std::unique_ptr<Client>> observers;
  absl::Status attached;
  while (attached.ok() && observers.size() < 100) {
    auto client = Client::Connect(tcp.address(), absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    attached = (*client)->Attach(observer);
    if (attached.ok()) observers.push_back(*std::move(client));
  }
  EXPECT_EQ(observers.size(), 64u);
  EXPECT_EQ(attached.code(), absl::StatusCode::kResourceExhausted) << attached;
  EXPECT_NE(attached.message().find("operators keep a few more"), std::string::npos) << attached;
  env.Use(ops);
  auto root = Client::Connect(tcp.address(), absl::Seconds(5));
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE((*root)->Attach(observer).ok());
}

// A follower of `job`'s events over TCP, with `tls`'s certificate, that never reads. Without
// bandwidth probes the stream's window stays at gRPC's first 64 KiB: 3,000 events (about
// 240 KB) outgrow it, and gstabd's write waits (read later, about 600 of them are counted as
// dropped).
class UnreadStream {
 public:
  UnreadStream(const std::string& address, const TestTls& tls, const std::string& job) {
    TlsEnvironment env(tls);
    grpc::ChannelArguments args;
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        TlsFromEnvironment(address, &args);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    if (!credentials.ok()) return;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    stub_ = v1::Stabilizer::NewStub(grpc::CreateCustomChannel(address, *credentials, args));
    v1::WatchEventsRequest request;
    request.set_job(job);
    request.set_follow(true);
    reader_ = stub_->WatchEvents(&ctx_, request);  // opened, never read
  }

 private:
  std::unique_ptr<v1::Stabilizer::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader_;
};

// A monitored worker of `job` on `tcp`'s socket whose 3,000 non-finite steps' events outgrow an
// UnreadStream's window (with `tls`'s certificate): gstabd's write to that stream waits.
// stepped() says the steps were taken; that the write waits is each test's own to show.
class StalledStream {
 public:
  StalledStream(TcpDaemon& tcp, const TestTls& tls, const std::string& job) {
    v1::PolicyConfig monitor;
    monitor.set_policy(v1::POLICY_MONITOR);
    auto worker = TestWorker::Create(tcp.daemon().socket(), testing::JobOptions(job, monitor));
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return;
    worker_ = *std::move(worker);
    stream_ = std::make_unique<UnreadStream>(tcp.address(), tls, job);
    const absl::Status stepped = testing::StepNonFinite(*worker_, 3000);
    EXPECT_TRUE(stepped.ok()) << stepped;
    stepped_ = stepped.ok();
  }
  bool stepped() const { return stepped_; }

 private:
  std::unique_ptr<TestWorker> worker_;
  std::unique_ptr<UnreadStream> stream_;
  bool stepped_ = false;
};

// gstabd's gstab_event_streams{state="waiting"} once it is 1 or more (a write has waited on
// its reader), within 15 s, or its last value (-1 when unread). Needs --metrics_port=0.
double WaitingStreams(const testing::DaemonProcess& daemon) {
  double value = -1;
  absl::StatusOr<int> port = daemon.MetricsPort();
  for (int i = 0; port.ok() && i < 150 && value < 1; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    value = testing::MetricValue(*port, "gstab_event_streams{state=\"waiting\"}");
  }
  return value;
}

// A client over TCP that stopped reading its event stream (a suspended `gstabctl events
// --follow` on an operator's laptop) leaves gstabd's write to it waiting on HTTP/2 flow
// control, as over the socket (where only shutting the connection down ends it): over TCP,
// gRPC's own shutdown ends that write, and gstabd exits 0 at once with its statistics saved.
TEST(TcpTest, AStalledEventStreamOverTcpDoesNotHoldGstabdsStop) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  const TestTls ops = testing::MakeClientCertificate(dir.path(), "ops", "/CN=gstab-ops");
  TcpDaemon tcp(dir.path(), tls, {"--tls_operators=gstab-ops", "--metrics_port=0"});
  ASSERT_FALSE(tcp.address().empty());
  StalledStream stalled(tcp, ops, "held");
  ASSERT_TRUE(stalled.stepped());
  // gstabd's write to the stream waits when the stop comes.
  ASSERT_GE(WaitingStreams(tcp.daemon()), 1) << tcp.daemon().Log();
  // Within DaemonProcess::Stop's 30 s (gRPC's shutdown ends it after the stop's 1 s grace).
  EXPECT_EQ(tcp.daemon().Stop().value_or(-1), 0) << tcp.daemon().Log();
  EXPECT_NE(tcp.daemon().Log().find("statistics checkpointed"), std::string::npos)
      << tcp.daemon().Log();
  // Ended by gRPC, not by the stop's last resort for calls that nothing ends.
  EXPECT_EQ(tcp.daemon().Log().find("exits without them"), std::string::npos) << tcp.daemon().Log();
}

// Over TCP too, a reader that takes no event has its stream ended after --event_write_timeout_s
// (the call cancelled, which ends gstabd's write waiting for room): its place under its
// certificate's cap of streams is free again.
TEST(TcpTest, AStalledEventStreamOverTcpIsEndedAndItsPlaceFreed) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  const TestTls ops = testing::MakeClientCertificate(dir.path(), "ops", "/CN=gstab-ops");
  TcpDaemon tcp(
      dir.path(), tls,
      {"--tls_operators=gstab-ops", "--event_write_timeout_s=2", "--max_event_streams=1"});
  ASSERT_FALSE(tcp.address().empty());
  StalledStream stalled(tcp, ops, "held");
  ASSERT_TRUE(stalled.stepped());
  ASSERT_TRUE(tcp.daemon().WaitForLog("has taken no event for", absl::Seconds(30)))
      << tcp.daemon().Log();
  TlsEnvironment env(ops);
  auto client = Client::Connect(tcp.address(), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  grpc::Status watched(grpc::StatusCode::UNAVAILABLE, "not tried");
  for (int i = 0; i < 100 && !watched.ok(); ++i) {  // the stream's end is noticed within its poll
    grpc::ClientContext ctx;
    v1::WatchEventsRequest request;
    request.set_job("held");
    request.set_recent(1);
    auto reader = (*client)->stub()->WatchEvents(&ctx, request);
    v1::Event event;
    while (reader->Read(&event)) {
    }
    watched = reader->Finish();
    if (!watched.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(watched.ok()) << "the stalled stream still holds the certificate's place: "
                            << watched.error_message();
  EXPECT_EQ(tcp.daemon().Stop().value_or(-1), 0) << tcp.daemon().Log();
  EXPECT_EQ(tcp.daemon().Log().find("exits without them"), std::string::npos) << tcp.daemon().Log();
}

}  // namespace
}  // namespace gstab
