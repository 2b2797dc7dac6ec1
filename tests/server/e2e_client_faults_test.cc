// The client library where its process or gstabd fails it: a thread it cannot start, a gstabd
// that takes the connection but does not answer, a server that is not a serving gstabd, one back
// after a long outage. This binary's pthread_create fails on demand.
#include <dlfcn.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/listener_process.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace {
std::atomic<bool> refuse_threads{false};
}  // namespace

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                              void* arg) {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const auto real = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "pthread_create"));
  if (refuse_threads.load()) return EAGAIN;
  return real(thread, attr, start, arg);
}

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::TempDir;
using testing::TestWorker;

// Attached workers of each job, as gstabd lists them.
uint32_t AttachedWorkers(Client* client, const std::string& job) {
  v1::ListJobsRequest request;
  v1::ListJobsResponse response;
  grpc::ClientContext ctx;
  EXPECT_TRUE(client->stub()->ListJobs(&ctx, request, &response).ok());
  for (const v1::JobSummary& j : response.jobs()) {
    if (j.job() == job) return j.attached_workers();
  }
  return 0;
}

// An attach whose keep-alive thread cannot start is not made: the earlier session goes on (the
// header's promise for a failed attach), keeping itself alive. So for an attach again to the
// same job and local rank, which gstabd would take in place of the earlier session.
TEST(E2eClientFaultsTest, AnAttachWithoutItsKeepAliveThreadLeavesTheEarlierSessionAsItWas) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--lease_ms=1500"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("first"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string session = (*worker)->client().session();
  for (const char* job : {"second", "first"}) {
    refuse_threads = true;
    absl::Status s = (*worker)->client().Attach(JobOptions(job));
    refuse_threads = false;
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << job << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "keep-alive thread")) << s;
    EXPECT_EQ((*worker)->client().session(), session) << job;
  }
  absl::SleepFor(absl::Seconds(3));  // two leases: only its keep-alive holds the session
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
  EXPECT_EQ(AttachedWorkers(&(*worker)->client(), "first"), 1u);
  EXPECT_EQ(AttachedWorkers(&(*worker)->client(), "second"), 0u);
}

// gstab.h lets a monitoring thread attach again while the training thread's call fails or
// waits, and that call may be an attach or a detach of its own: they take turns. Two at once
// joined one keep-alive thread twice, or dropped a running one (std::terminate), and a detach
// could leave the session an attach had just made alive, unowned.
TEST(E2eClientFaultsTest, AttachesAndDetachesOnSeveralThreadsTakeTurns) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 30; ++i) {
        if (t < 2) {
          if (!(*client)->Attach(JobOptions(t == 0 ? "turns" : "other")).ok()) ++failed;
        } else {
          (void)(*client)->Detach();  // FAILED_PRECONDITION when not attached
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  // Whatever the last turn was, one attach leaves one session, of that job, alive.
  ASSERT_TRUE((*client)->Attach(JobOptions("turns")).ok());
  EXPECT_EQ(AttachedWorkers(client->get(), "turns"), 1u);
  EXPECT_EQ(AttachedWorkers(client->get(), "other"), 0u);
  EXPECT_TRUE((*client)->Detach().ok());
  EXPECT_EQ(AttachedWorkers(client->get(), "turns"), 0u);
}

// A connection setting in the environment that is not a whole number in range fails the
// connect, naming it, rather than leave the default in force unseen (a timeout of "600s", or
// one of 1 ms that would give up every call).
TEST(E2eClientFaultsTest, AMistypedConnectionSettingFailsTheConnectSayingSo) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  for (const auto& [name, value] :
       {std::pair<const char*, const char*>{"GSTAB_CALL_TIMEOUT_S", "600s"},
        {"GSTAB_CALL_TIMEOUT_S", "0"},
        {"GSTAB_KEEPALIVE_MS", "999"},
        {"GSTAB_KEEPALIVE_TIMEOUT_MS", "1"}}) {
    setenv(name, value, 1);
    auto refused = Client::Connect(daemon->socket());
    unsetenv(name);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
        << name << "=" << value << ": " << refused.status();
    EXPECT_TRUE(absl::StrContains(refused.status().message(), absl::StrCat(name, "='", value)))
        << refused.status();
  }
  setenv("GSTAB_KEEPALIVE_TIMEOUT_MS", "", 1);  // empty: unset
  auto client = Client::Connect(daemon->socket());
  unsetenv("GSTAB_KEEPALIVE_TIMEOUT_MS");
  EXPECT_TRUE(client.ok()) << client.status();
}

// A process out of file descriptors is told so at connect, rather than aborted inside gRPC (its
// first channel's) or told that no gstabd answers.
TEST(E2eClientFaultsTest, AConnectWithoutFileDescriptorsLeftFailsSayingSo) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  struct rlimit was = {};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &was), 0);
  int open_now = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++open_now;
  }
  struct rlimit tight = was;
  tight.rlim_cur = static_cast<rlim_t>(open_now + 2);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  auto client = Client::Connect(daemon->socket(), absl::Seconds(2));
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &was), 0);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kResourceExhausted) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "ulimit -n")) << client.status();
  EXPECT_TRUE(Client::Connect(daemon->socket()).ok());  // with them back
}

// A gstabd that takes the connection but does not answer (stopped) fails the connect within its
// timeout, saying so, rather than a first call that would wait minutes. The timeout is longer
// than one health check's 5 s.
TEST(E2eClientFaultsTest, AConnectToAGstabdThatDoesNotAnswerFailsSayingSo) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto first = Client::Connect(daemon->socket());  // the process's connection, made
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(daemon->process().Stop());
  const absl::Time start = absl::Now();
  auto second = Client::Connect(daemon->socket(), absl::Seconds(7));
  const absl::Duration took = absl::Now() - start;
  daemon->process().Signal(SIGCONT);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "did not answer")) << second.status();
  EXPECT_GE(took, absl::Seconds(7));
  EXPECT_LT(took, absl::Seconds(9));
}

// A server at the socket that is not a gstabd serving: one stopping (its health check answers
// NOT_SERVING, as a stopping gstabd's does on connections made before) fails the connect at its
// timeout, saying so, rather than a first call refused later, and a new one at the path is
// reached meanwhile; one that is no gstabd at all (no health service) fails it at once.
// A gRPC server of some other service (all its methods unimplemented).
std::unique_ptr<grpc::Server> ServeAt(const std::string& path, bool health) {
  static v1::Rendezvous::Service* other = new v1::Rendezvous::Service();
  grpc::EnableDefaultHealthCheckService(health);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  builder.RegisterService(other);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  grpc::EnableDefaultHealthCheckService(false);
  return server;
}

// A health service that answers every check with `code`: UNAVAILABLE, as a connection lost at
// each call; NOT_FOUND, as another server's that does not know gstabd's own service ("").
class FailingHealth final : public grpc::health::v1::Health::Service {
 public:
  explicit FailingHealth(grpc::StatusCode code) : code_(code) {}
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse*) override {
    return grpc::Status(code_, "made to fail");
  }

 private:
  const grpc::StatusCode code_;
};

std::unique_ptr<grpc::Server> ServeHealthAt(const std::string& path,
                                            grpc::health::v1::Health::Service* health) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  builder.RegisterService(health);
  return builder.BuildAndStart();
}

// A server that takes the connection but whose health check fails UNAVAILABLE until the connect
// timeout: the connect fails, saying so, rather than hand back a client whose first call fails.
TEST(E2eClientFaultsTest, AConnectWhoseHealthCheckStaysUnavailableFailsSayingSo) {
  TempDir dir;
  const std::string path = dir.path() + "/unavailable.sock";
  FailingHealth health(grpc::StatusCode::UNAVAILABLE);
  std::unique_ptr<grpc::Server> server = ServeHealthAt(path, &health);
  ASSERT_NE(server, nullptr);
  auto client = Client::Connect(path, absl::Seconds(2));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "health check failed"))
      << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "made to fail")) << client.status();
  server->Shutdown();
}

// A server whose health service does not know gstabd's own service is not gstabd; one that
// refuses the check, or fails it otherwise, would refuse the client's first call too; one whose
// checks are cancelled is stopping. Each connect fails, saying so, rather than hand back a client
// whose first call fails.
TEST(E2eClientFaultsTest, AConnectWhoseHealthCheckIsRefusedFailsSayingSo) {
  TempDir dir;
  for (const auto& [answer, code, says] :
       {std::make_tuple(grpc::StatusCode::NOT_FOUND, absl::StatusCode::kFailedPrecondition,
                        "is not gstabd"),
        std::make_tuple(grpc::StatusCode::PERMISSION_DENIED, absl::StatusCode::kPermissionDenied,
                        "refused this client's health check: made to fail"),
        std::make_tuple(grpc::StatusCode::RESOURCE_EXHAUSTED, absl::StatusCode::kResourceExhausted,
                        "failed this client's health check: made to fail"),
        // As a stopping gstabd's server cancels its calls: not serving, past the timeout.
        std::make_tuple(grpc::StatusCode::CANCELLED, absl::StatusCode::kUnavailable,
                        "is not serving (stopping)")}) {
    const std::string path = dir.path() + "/refusing.sock";
    FailingHealth health(answer);
    std::unique_ptr<grpc::Server> server = ServeHealthAt(path, &health);
    ASSERT_NE(server, nullptr);
    auto client = Client::Connect(path, absl::Seconds(2));
    ASSERT_FALSE(client.ok());
    EXPECT_EQ(client.status().code(), code) << client.status();
    EXPECT_TRUE(absl::StrContains(client.status().message(), says)) << client.status();
    server->Shutdown();
    std::filesystem::remove(path);
  }
}

// A worker connected by a relative socket path that then changes its working folder reaches a
// restarted gstabd at the path it meant, not at the same name in its new folder.
TEST(E2eClientFaultsTest, ARelativeSocketPathOutlastsAChangeOfWorkingFolder) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::filesystem::path before = std::filesystem::current_path();
  absl::Cleanup back = [&] { std::filesystem::current_path(before); };
  std::filesystem::current_path(dir.path());
  auto client = Client::Connect(std::filesystem::path(daemon->socket()).filename().string());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attach(JobOptions("moved")).ok());
  std::filesystem::current_path("/");
  ASSERT_TRUE(daemon->Stop().ok());
  EXPECT_EQ((*client)->GetStats().status().code(), absl::StatusCode::kUnavailable);
  auto again = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(again.ok()) << again.status();
  absl::Status s = (*client)->Attach(JobOptions("moved"));
  EXPECT_TRUE(s.ok()) << s;
}

TEST(E2eClientFaultsTest, AConnectToAServerThatIsNotAServingGstabdFailsSayingSo) {
  TempDir dir;
  const std::string path = dir.path() + "/other.sock";
  {
    std::unique_ptr<grpc::Server> stopping = ServeAt(path, /*health=*/true);
    ASSERT_NE(stopping, nullptr);
    stopping->GetHealthCheckService()->SetServingStatus(false);
    const absl::Time start = absl::Now();
    auto client = Client::Connect(path, absl::Seconds(2));
    ASSERT_FALSE(client.ok());
    EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable) << client.status();
    EXPECT_TRUE(absl::StrContains(client.status().message(), "not serving")) << client.status();
    EXPECT_GE(absl::Now() - start, absl::Seconds(2));
    stopping->GetHealthCheckService()->SetServingStatus(true);
    auto held = Client::Connect(path, absl::Seconds(2));  // serving again
    ASSERT_TRUE(held.ok()) << held.status();
    // A new server at the path while the process still holds a connection to the stopping
    // one, which a channel shares with the process's others: reached on a connection of its
    // own.
    stopping->GetHealthCheckService()->SetServingStatus(false);
    std::filesystem::remove(path);
    std::unique_ptr<grpc::Server> next = ServeAt(path, /*health=*/true);
    ASSERT_NE(next, nullptr);
    auto reached = Client::Connect(path, absl::Seconds(5));
    EXPECT_TRUE(reached.ok()) << reached.status();
    stopping->Shutdown();
    next->Shutdown();
  }
  std::filesystem::remove(path);
  std::unique_ptr<grpc::Server> other = ServeAt(path, /*health=*/false);
  ASSERT_NE(other, nullptr);
  auto client = Client::Connect(path, absl::Seconds(5));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "is not gstabd")) << client.status();
  other->Shutdown();
}

// A client whose gstabd was gone long enough for gRPC to wait tens of seconds between connection
// attempts reaches the new one at its next call, not at gRPC's next attempt.
TEST(E2eClientFaultsTest, TheFirstCallAfterALongOutageReachesTheNewGstabd) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attach(JobOptions("outage")).ok());
  ASSERT_TRUE(daemon->Stop().ok());
  EXPECT_EQ((*client)->GetStats().status().code(), absl::StatusCode::kUnavailable);
  absl::SleepFor(absl::Seconds(25));  // gRPC's backoff grows to over 10 s meanwhile
  auto again = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(again.ok()) << again.status();
  absl::Status s = (*client)->Attach(JobOptions("outage"));
  EXPECT_TRUE(s.ok()) << s;
}

// What learns that a session's gstabd is gone (CudaGradients releases the streams waiting for
// its steps with it, which would otherwise wait for good): told on the keep-alive thread, with
// the client's id, once gstabd is killed, and once a new gstabd, which does not know the
// session, answers at the socket; never while the session's own gstabd serves it, nor when
// that gstabd ended the session itself.
std::atomic<uint64_t> lost_client{0};
std::atomic<int> lost_calls{0};

// Counts into lost_client and lost_calls (from 0) while it lives.
class CountLosses {
 public:
  CountLosses() {
    lost_client = 0;
    lost_calls = 0;
    Client::SetDaemonLostHandler([](uint64_t id) {
      lost_client = id;
      ++lost_calls;
    });
  }
  CountLosses(const CountLosses&) = delete;
  CountLosses& operator=(const CountLosses&) = delete;
  ~CountLosses() { Client::SetDaemonLostHandler(nullptr); }
};

bool LostWithin(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (lost_calls.load() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  return lost_calls.load() > 0;
}

TEST(E2eClientFaultsTest, AGoneGstabdIsToldToTheDaemonLostHandler) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--lease_ms=1500"});  // keep-alives: 500 ms
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attach(JobOptions("lost")).ok());
  const bool watched = ListenerProcess(daemon->socket()).Watching();
  const CountLosses counted;
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(lost_calls.load(), 0) << "told while its gstabd serves the session";
  // A session its own gstabd ended (its lease expired while gstabd was stopped, here): that
  // gstabd releases the session's steps itself, so nothing is told.
  for (int tries = 0; tries < 3 && (*client)->GetStats().ok(); ++tries) {
    ASSERT_TRUE(daemon->process().Stop());
    absl::SleepFor(absl::Seconds(3));  // two leases
    daemon->process().Signal(SIGCONT);
    absl::SleepFor(absl::Seconds(1));
  }
  ASSERT_EQ((*client)->GetStats().status().code(), absl::StatusCode::kUnauthenticated)
      << "the session did not expire";
  absl::SleepFor(absl::Seconds(2));  // keep-alives refused meanwhile
  EXPECT_EQ(lost_calls.load(), 0) << "told when the gstabd that held the session ended it";

  daemon->process().Signal(SIGKILL);
  ASSERT_TRUE(daemon->process().Wait(absl::Seconds(10)).ok());
  // At the first keep-alive after: the client watches gstabd's process, whose exit is sure
  // (a stopping gstabd refuses calls before it exits, and may still run the steps it holds).
  // Where pidfds are refused (an old kernel, a sandbox), after 20 s without an answer.
  EXPECT_TRUE(LostWithin(watched ? absl::Seconds(5) : absl::Seconds(30)))
      << "not told that gstabd has exited";
  EXPECT_EQ(lost_client.load(), (*client)->id());

  auto again = DaemonProcess::Start(dir.path(), {"--lease_ms=1500"});
  ASSERT_TRUE(again.ok()) << again.status();
  // Connected to the new one once a call of the session is refused there, not unanswered.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*client)->GetStats().status().code() != absl::StatusCode::kUnauthenticated &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ((*client)->GetStats().status().code(), absl::StatusCode::kUnauthenticated);
  absl::SleepFor(absl::Seconds(1));  // a keep-alive that found no gstabd, told meanwhile
  lost_calls = 0;
  EXPECT_TRUE(LostWithin(absl::Seconds(5))) << "not told that the new gstabd has no session";
}

// A detach ends the session's registration: its number moves on, which CUDA gradients check
// before writing a step's ready word into the results buffer gstabd has freed (a CUDA step after
// the detach is then refused, writing nothing; that part needs a GPU: cuda_e2e_test).
TEST(E2eClientFaultsTest, ADetachEndsTheRegistration) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("detached"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  const uint64_t registered = (*worker)->client().Registration();
  ASSERT_TRUE((*worker)->client().Detach().ok());
  EXPECT_NE((*worker)->client().Registration(), registered);
}

// A gstabd restarted within a keep-alive period, and attached to again at once: the earlier
// session's keep-alive, stopped by that attach, never saw its gstabd go, so the attach tells.
TEST(E2eClientFaultsTest, AnAttachAnsweredByANewGstabdTellsTheDaemonLostHandler) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--lease_ms=60000"});  // keep-alives: 20 s
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attach(JobOptions("restarted")).ok());
  const CountLosses counted;
  // An attach again to the same gstabd is no loss.
  ASSERT_TRUE((*client)->Attach(JobOptions("restarted")).ok());
  EXPECT_EQ(lost_calls.load(), 0) << "told when the same gstabd answered the attach again";

  const absl::Time killed = absl::Now();
  daemon->process().Signal(SIGKILL);
  ASSERT_TRUE(daemon->process().Wait(absl::Seconds(10)).ok());
  auto again = DaemonProcess::Start(dir.path(), {"--lease_ms=60000"});
  ASSERT_TRUE(again.ok()) << again.status();
  absl::Status attached = absl::UnavailableError("not tried");
  for (int tries = 0; tries < 50 && !attached.ok(); ++tries) {
    attached = (*client)->Attach(JobOptions("restarted"));
    if (!attached.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(attached.ok()) << attached;
  ASSERT_LT(absl::Now() - killed, absl::Seconds(15)) << "too slow to tell the attach's doing "
                                                        "from the earlier keep-alive's";
  EXPECT_GT(lost_calls.load(), 0) << "not told, by the attach, that the earlier gstabd is gone";
  EXPECT_EQ(lost_client.load(), (*client)->id());
  // The new session is the new gstabd's, and kept.
  EXPECT_TRUE((*client)->GetStats().ok());
}

}  // namespace
}  // namespace gstab
