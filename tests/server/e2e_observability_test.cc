// End-to-end observability: /metrics scraped live (and by a real Prometheus server), the event
// stream, against a real gstabd and the real example trainer.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/server/e2e_trainer_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::HttpRequest;
using testing::Subprocess;
using testing::TempDir;

class E2eObservabilityTest : public testing::TrainerDaemonTest {};

TEST_F(E2eObservabilityTest, LiveScrapeIsValidExpositionAndOnlyGetAndHeadAreServed) {
  Train("scraped", {"--steps=120", "--spike_steps=60", "--print_every=1000"});
  EXPECT_NE(Ctl("config set --job=absent policy=monitor").first, 0);  // an observer's attach
  absl::StatusOr<testing::HttpResponse> get = testing::HttpRequest(port_, "GET", "/metrics");
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(get->status, 200);
  EXPECT_NE(get->headers.find("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            std::string::npos)
      << get->headers;
  EXPECT_NE(get->body.find("gstab_steps_total{job=\"scraped\"} 120\n"), std::string::npos);
  EXPECT_NE(get->body.find("gstab_spikes_total{job=\"scraped\"} "), std::string::npos);
  EXPECT_NE(get->body.find("gstab_rpc_errors_total{method=\"Attach\",code=\"NOT_FOUND\"} 1\n"),
            std::string::npos)
      << get->body;
  EXPECT_NE(
      get->body.find("gstab_rpc_errors_total{method=\"Step\",code=\"DEADLINE_EXCEEDED\"} 0\n"),
      std::string::npos)
      << get->body;
  // And the calls refused at a cap: the first refusal is an increase (GstabRefusingAtItsCaps).
  for (const char* method : {"RegisterBuffers", "GetStats", "ListJobs"}) {
    EXPECT_NE(get->body.find(absl::StrCat("gstab_rpc_errors_total{method=\"", method,
                                          "\",code=\"RESOURCE_EXHAUSTED\"} 0\n")),
              std::string::npos)
        << method << ": " << get->body;
  }
  const std::string file = dir_.path() + "/scrape.txt";
  std::ofstream(file) << get->body;
  auto [rc, out] = testing::RunShell("promtool check metrics < " + file);
  EXPECT_EQ(rc, 0) << out;

  absl::StatusOr<testing::HttpResponse> head = testing::HttpRequest(port_, "HEAD", "/metrics");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  absl::StatusOr<testing::HttpResponse> post = testing::HttpRequest(port_, "POST", "/metrics");
  ASSERT_TRUE(post.ok());
  EXPECT_EQ(post->status, 405);
}

// Value of an instant query, or NaN while Prometheus has no sample.
double PrometheusValue(int port, const std::string& query) {
  std::string encoded;
  for (char c : query) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
      encoded += c;
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
      encoded += hex;
    }
  }
  absl::StatusOr<testing::HttpResponse> r =
      testing::HttpRequest(port, "GET", "/api/v1/query?query=" + encoded);
  if (!r.ok()) return NAN;
  std::smatch m;
  static const std::regex value(R"re("value":\[[0-9.e+]+,"([^"]+)"\])re");
  if (!std::regex_search(r->body, m, value)) return NAN;
  return std::stod(m[1]);
}

TEST_F(E2eObservabilityTest, RealPrometheusStoresWhatTheTrainerSaw) {
  const int prom_port = testing::FreeTcpPort();
  const std::string config = dir_.path() + "/prometheus.yml";
  std::ofstream(config) << "global:\n  scrape_interval: 1s\nscrape_configs:\n"
                        << "  - job_name: gstabd\n    honor_labels: true\n"
                        << "    static_configs:\n      - targets: ['127.0.0.1:" << port_ << "']\n";
  absl::StatusOr<Subprocess> prom =
      Subprocess::Start({"/usr/bin/prometheus", "--config.file=" + config,
                         "--storage.tsdb.path=" + dir_.path() + "/tsdb",
                         "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
                        dir_.path() + "/prometheus.log");
  ASSERT_TRUE(prom.ok()) << prom.status();

  const std::string out = Train("prom-job", {"--steps=300", "--spike_steps=100,200",
                                             "--spike_factor=1e5", "--print_every=1"});
  int spike_steps = 0, skip_steps = 0;
  double last_raw = 0;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    spike_steps += line.find("spike-detected") != std::string::npos;
    skip_steps += line.find(" skip") != std::string::npos;
    int step;
    double loss, raw;
    if (std::sscanf(line.c_str(), "%d %lf %lf", &step, &loss, &raw) == 3 && step == 300) {
      last_raw = raw;
    }
  }
  ASSERT_GE(spike_steps, 2) << out;
  ASSERT_GT(last_raw, 0) << out;

  const absl::Time deadline = absl::Now() + absl::Seconds(45);
  double steps = NAN, spikes = NAN, skipped = NAN, norm = NAN;
  while (absl::Now() < deadline) {
    steps = PrometheusValue(prom_port, "gstab_steps_total{job=\"prom-job\"}");
    spikes = PrometheusValue(prom_port, "gstab_spikes_total{job=\"prom-job\"}");
    skipped = PrometheusValue(prom_port, "gstab_skipped_steps_total{job=\"prom-job\"}");
    norm = PrometheusValue(prom_port, "gstab_job_norm{job=\"prom-job\"}");
    if (steps == 300) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_EQ(steps, 300);
  EXPECT_EQ(spikes, spike_steps);
  EXPECT_EQ(skipped, skip_steps);
  EXPECT_NEAR(norm / last_raw, 1.0, 1e-3);  // the trainer prints 4 significant digits
  const double groups = PrometheusValue(prom_port, "count(gstab_norm{job=\"prom-job\"})");
  EXPECT_EQ(groups, 6);
}

// `job`'s events with a sequence after `after`, until one that `until` accepts (following) or
// the end of its recent history. A followed stream starts with all of the job's recent history
// (the call returns before gstabd has subscribed it, so what happens meanwhile comes from
// there): no event is missed however late the subscription lands.
std::vector<v1::Event> Collect(Client* client, const std::string& job, bool follow,
                               const std::function<bool(const v1::Event&)>& until,
                               uint64_t after = 0) {
  v1::WatchEventsRequest request;
  request.set_job(job);
  request.set_follow(follow);
  request.set_recent(1 << 20);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = client->stub()->WatchEvents(&ctx, request);
  std::vector<v1::Event> events;
  v1::Event e;
  while (reader->Read(&e)) {
    if (e.sequence() <= after) continue;
    events.push_back(e);
    if (until(e)) {
      ctx.TryCancel();
      break;
    }
  }
  return events;
}

TEST_F(E2eObservabilityTest, EveryInjectedSpikeAppearsExactlyOnceInOrder) {
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  std::vector<v1::Event> events;
  std::thread watcher([&] {
    events = Collect(client->get(), "evented", true,
                     [](const v1::Event& e) { return e.type() == v1::EVENT_TYPE_DETACH; });
  });
  Train("evented", {"--steps=250", "--spike_steps=60,120,180", "--print_every=1000"});
  watcher.join();
  std::map<uint64_t, int> spikes;
  uint64_t last_sequence = 0;
  for (const v1::Event& e : events) {
    EXPECT_GT(e.sequence(), last_sequence);
    last_sequence = e.sequence();
    EXPECT_EQ(e.job(), "evented");
    if (e.type() == v1::EVENT_TYPE_SPIKE) ++spikes[e.step()];
  }
  for (uint64_t injected : {60, 120, 180}) EXPECT_EQ(spikes[injected], 1) << "step " << injected;
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().type(), v1::EVENT_TYPE_ATTACH);
  EXPECT_EQ(events.back().type(), v1::EVENT_TYPE_DETACH);
}

TEST_F(E2eObservabilityTest, IdleConnectionsNeitherStarveScrapesNorStayOpen) {
  // As a port scanner or a stuck probe: connections that never send a request, more of them
  // than gstabd has handler threads (8), so a scrape waits for the request timeout (5 s) to free
  // one.
  std::vector<int> idle;
  for (int i = 0; i < 12; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    idle.push_back(fd);
  }
  absl::SleepFor(absl::Milliseconds(200));  // let the server take them up
  auto scrape =
      std::async(std::launch::async, [&] { return HttpRequest(port_, "GET", "/metrics"); });
  ASSERT_EQ(scrape.wait_for(std::chrono::seconds(12)), std::future_status::ready)
      << "idle connections held the handler threads past the request timeout";
  ASSERT_TRUE(scrape.get().ok());
  // The server closes them (after its 5 s request timeout): a read sees the end.
  for (int fd : idle) {
    timeval wait{15, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    char c;
    EXPECT_EQ(read(fd, &c, 1), 0) << "an idle connection was kept open";
    close(fd);
  }
}

TEST_F(E2eObservabilityTest, AnObserversAttachAndDetachArePaired) {
  Train("watched", {"--steps=5", "--print_every=1000"});  // an observer needs a held job
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  // The trainer's events are history: only those after them count.
  const std::vector<v1::Event> trained =
      Collect(client->get(), "watched", false, [](const v1::Event&) { return false; });
  ASSERT_FALSE(trained.empty());
  const uint64_t before = trained.back().sequence();
  std::vector<v1::Event> events;
  std::thread watcher([&] {
    events = Collect(
        client->get(), "watched", true,
        [](const v1::Event& e) { return e.type() == v1::EVENT_TYPE_DETACH; }, before);
  });
  auto observer = Client::Connect(daemon_->socket());
  ASSERT_TRUE(observer.ok());
  AttachOptions watch = testing::JobOptions("watched");
  watch.observer = true;
  ASSERT_TRUE((*observer)->Attach(watch).ok());
  ASSERT_TRUE((*observer)->Detach().ok());
  watcher.join();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type(), v1::EVENT_TYPE_ATTACH);
  EXPECT_EQ(events[0].detail(), "observer");
  EXPECT_EQ(events[1].type(), v1::EVENT_TYPE_DETACH);
  EXPECT_EQ(events[1].detail(), "observer: detached");
}

// A worker of a new job `job` that changes no gradient.
std::unique_ptr<testing::TestWorker> Monitored(const std::string& socket, const std::string& job) {
  AttachOptions o;
  o.job = job;
  o.config.set_policy(v1::POLICY_MONITOR);
  auto worker = testing::TestWorker::Create(socket, o);
  EXPECT_TRUE(worker.ok()) << worker.status();
  return worker.ok() ? *std::move(worker) : nullptr;
}

// A stream of `job`'s events, following, with every recent one: the call returns before gstabd
// has subscribed it, and events of the job from before that (its ATTACH, if the worker is
// quick) come from the job's recent history instead.
v1::WatchEventsRequest Following(const std::string& job) {
  v1::WatchEventsRequest request;
  request.set_job(job);
  request.set_follow(true);
  request.set_recent(1 << 20);
  return request;
}

TEST_F(E2eObservabilityTest, StalledSubscriberNeverHoldsStepsAndLosesNothingUncounted) {
  auto worker = Monitored(daemon_->socket(), "stalled");
  ASSERT_NE(worker, nullptr);
  auto watcher = Client::Connect(daemon_->socket());
  ASSERT_TRUE(watcher.ok());
  grpc::ClientContext ctx;
  auto reader = (*watcher)->stub()->WatchEvents(&ctx, Following("stalled"));
  // The worker's ATTACH comes from the history as gstabd subscribes the stream: once it is read,
  // every later event reaches the stream's queue (or is counted dropped there). Then not read.
  uint64_t dropped = 0, received = 0, last_step = 0;
  v1::Event e;
  ASSERT_TRUE(reader->Read(&e));
  ASSERT_EQ(e.type(), v1::EVENT_TYPE_ATTACH);
  ++received;
  constexpr uint64_t kSteps = 2000;
  ASSERT_EQ(testing::StepNonFinite(*worker, kSteps), absl::OkStatus());
  // Every event published for the job is either delivered or counted as dropped: ATTACH,
  // DIVERGENCE_START (three non-finite steps in a row) and one SKIP per step.
  while (last_step < kSteps && reader->Read(&e)) {
    dropped += e.dropped_before();
    ++received;
    if (e.type() == v1::EVENT_TYPE_SKIP) last_step = e.step();
  }
  ctx.TryCancel();
  EXPECT_EQ(last_step, kSteps);  // the newest events survive
  EXPECT_EQ(received + dropped, kSteps + 2);
}

// A `gstabctl events --follow` of `worker`'s job, subscribed, then suspended (SIGSTOP) while the
// worker's events fill gstabd's write to it: a subscriber that stopped reading.
absl::StatusOr<Subprocess> StalledFollower(const std::string& socket, const std::string& job,
                                           testing::TestWorker& worker) {
  absl::StatusOr<Subprocess> follower =
      Subprocess::Start({testing::BinaryPath("tools/gstabctl"), "--socket=" + socket, "events",
                         "--follow", "--job=" + job});
  if (!follower.ok()) return follower.status();
  absl::StatusOr<std::string> attached = follower->ReadLine(absl::Seconds(30));  // subscribed
  if (!attached.ok()) return attached.status();
  if (attached->find("ATTACH") == std::string::npos) {
    return absl::InternalError("not the worker's ATTACH event: " + *attached);
  }
  if (!follower->Stop()) return absl::InternalError("cannot suspend the follower");
  if (absl::Status s = testing::StepNonFinite(worker, 3000); !s.ok()) return s;
  return follower;
}

// A subscriber that stopped reading (a suspended `gstabctl events --follow`) leaves gstabd's
// write to it waiting, which no cancellation ends: gstabd's stop ends it, and exits 0 with its
// statistics saved, where it used to wait for the subscriber for ever.
TEST_F(E2eObservabilityTest, StalledSubscriberDoesNotHoldGstabdsStop) {
  auto worker = Monitored(daemon_->socket(), "held");
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<Subprocess> follower = StalledFollower(daemon_->socket(), "held", *worker);
  ASSERT_TRUE(follower.ok()) << follower.status();
  EXPECT_EQ(daemon_->Stop().value_or(-1), 0) << daemon_->Log();
  EXPECT_NE(daemon_->Log().find("statistics checkpointed"), std::string::npos) << daemon_->Log();
  EXPECT_NE(daemon_->Log().find("open connections"), std::string::npos) << daemon_->Log();
  // Ended by that shutdown, not by the stop's last resort for calls that nothing ends.
  EXPECT_EQ(daemon_->Log().find("exits without them"), std::string::npos) << daemon_->Log();
}

// How a gstabd started with `flags` stops while a stalled subscriber (StalledFollower) holds its
// stop, which gstabd would end 2 s after the drain: its exit code, how long it took, its log.
struct HeldStop {
  int code = -1;
  absl::Duration took;
  std::string log;
};
absl::StatusOr<HeldStop> StopHeldBySubscriber(const std::vector<std::string>& flags) {
  TempDir dir;
  absl::StatusOr<DaemonProcess> daemon = DaemonProcess::Start(dir.path(), flags);
  if (!daemon.ok()) return daemon.status();
  auto worker = Monitored(daemon->socket(), "held");
  if (worker == nullptr) return absl::InternalError("the worker did not attach");
  absl::StatusOr<Subprocess> follower = StalledFollower(daemon->socket(), "held", *worker);
  if (!follower.ok()) return follower.status();
  const absl::Time start = absl::Now();
  HeldStop stop;
  stop.code = daemon->Stop().value_or(-1);
  stop.took = absl::Now() - start;
  stop.log = daemon->Log();
  return stop;
}

// A stop held up past the workers' lease (here by a stalled subscriber; across nodes, by a step
// in an exchange) expires no session: gstabd answers no keep-alives while it stops, and would
// release live workers' buffers (unlinking the shared memory of a container's).
TEST(E2eStopTest, AStopLongerThanALeaseExpiresNoSession) {
  absl::StatusOr<HeldStop> stop = StopHeldBySubscriber({"--lease_ms=1000"});
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->code, 0) << stop->log;
  EXPECT_GE(stop->took, absl::Seconds(2)) << "the stop took less than 2 leases";
  const size_t stopping = stop->log.find("gstabd stopping");
  ASSERT_NE(stopping, std::string::npos) << stop->log;
  EXPECT_EQ(stop->log.find("expired", stopping), std::string::npos) << stop->log;
}

// A stop held up past --stop_limit_s ends there: gstabd exits 1, saying why, rather than wait
// for the supervisor's kill.
TEST(E2eStopTest, AStopEndsAtItsLimit) {
  absl::StatusOr<HeldStop> stop = StopHeldBySubscriber({"--stop_limit_s=1"});
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->code, 1) << stop->log;
  EXPECT_NE(stop->log.find("gstabd's stop has run 1s (--stop_limit_s;"), std::string::npos)
      << stop->log;
}

// A second stop signal while gstabd stops (held here by a stalled subscriber) ends it at once,
// exit code 1, saying so: an operator's second Ctrl-C (SIGINT) is not ignored. A SIGTERM
// repeated within 2 s of the first (a supervisor's) is: the stop goes on, to its checkpoint.
// (A SIGTERM later ends it at once: e2e_multinode_rendezvous_test, whose stop lasts longer.)
TEST(E2eStopTest, ASecondStopSignalEndsTheStopAtOnce) {
  for (const bool interrupt : {false, true}) {
    TempDir dir;
    absl::StatusOr<DaemonProcess> daemon = DaemonProcess::Start(dir.path());
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    auto worker = Monitored(daemon->socket(), "held");
    ASSERT_NE(worker, nullptr);
    absl::StatusOr<Subprocess> follower = StalledFollower(daemon->socket(), "held", *worker);
    ASSERT_TRUE(follower.ok()) << follower.status();
    daemon->process().Signal(SIGTERM);
    ASSERT_TRUE(daemon->WaitForLog("gstabd stopping")) << daemon->Log();
    daemon->process().Signal(interrupt ? SIGINT : SIGTERM);
    EXPECT_EQ(daemon->process().Wait(absl::Seconds(30)).value_or(-1), interrupt ? 1 : 0)
        << daemon->Log();
    const std::string log = daemon->Log();
    if (interrupt) {
      EXPECT_NE(log.find("again while stopping: gstabd exits now"), std::string::npos) << log;
    } else {
      EXPECT_NE(log.find("the stop goes on"), std::string::npos) << log;
      EXPECT_EQ(log.find("again while stopping"), std::string::npos) << log;
      EXPECT_NE(log.find("gstabd stopped; statistics checkpointed"), std::string::npos) << log;
    }
  }
}

// A reader that takes no event (a suspended follower) has its stream ended after
// --event_write_timeout_s, its connection shut down: the stream's thread, and its place under
// the caller's cap of streams, are free again, and gstabd's stop is not held by it.
TEST(E2eEventStreamTest, AStreamWhoseReaderTakesNoEventIsEnded) {
  TempDir dir;
  absl::StatusOr<DaemonProcess> daemon =
      DaemonProcess::Start(dir.path(), {"--event_write_timeout_s=2", "--max_event_streams=1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = Monitored(daemon->socket(), "held");
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<Subprocess> follower = StalledFollower(daemon->socket(), "held", *worker);
  ASSERT_TRUE(follower.ok()) << follower.status();
  ASSERT_TRUE(daemon->WaitForLog("has taken no event for", absl::Seconds(30))) << daemon->Log();
  EXPECT_NE(daemon->Log().find("its connection shut down"), std::string::npos) << daemon->Log();
  const std::string events = testing::BinaryPath("tools/gstabctl") +
                             " --socket=" + daemon->socket() + " events --recent=1 2>&1";
  int rc = -1;
  std::string out;
  for (int i = 0; i < 100 && rc != 0; ++i) {  // the stream's end is noticed within its poll
    std::tie(rc, out) = testing::RunShell(events);
    if (rc != 0) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(rc, 0) << out;
  follower->Signal(SIGCONT);
  // Its stream broke off, and the follower says gstabd ended it, not that gstabd stopped.
  const std::string said = follower->ReadAll();
  const std::string tail = said.substr(said.size() > 2000 ? said.size() - 2000 : 0);
  EXPECT_EQ(follower->Wait(absl::Seconds(30)).value_or(0), 1) << tail;
  EXPECT_NE(said.find("while gstabd serves: it ends a stream whose reader takes no event"),
            std::string::npos)
      << tail;
  EXPECT_EQ(daemon->Stop().value_or(-1), 0) << daemon->Log();
  EXPECT_EQ(daemon->Log().find("open connections"), std::string::npos) << daemon->Log();
}

// A checkpoint gstabd cannot write is counted, and the log says why; the time of the last good
// one is exported, and moves on once checkpoints are written again.
TEST(E2eCheckpointMetricsTest, FailedCheckpointsAreCountedAndSaidWhy) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--metrics_port=0", "--checkpoint_interval_s=1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<int> port = daemon->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  auto worker = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("saved"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  auto other = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("saved2"));
  ASSERT_TRUE(other.ok()) << other.status();
  (*other)->Fill(1, 1);
  ASSERT_TRUE((*other)->client().Step(1).ok());
  auto value = [&](const std::string& name) { return testing::MetricValue(*port, name); };
  auto wait_for = [&](const std::string& name, auto done) {
    for (int i = 0; i < 100 && !done(value(name)); ++i) absl::SleepFor(absl::Milliseconds(100));
    return value(name);
  };
  EXPECT_GT(
      wait_for("gstab_checkpoint_last_success_timestamp_seconds", [](double v) { return v > 0; }),
      0);
  EXPECT_EQ(value("gstab_checkpoint_failures_total"), 0);

  // The state folder replaced by a file: every save fails (ENOTDIR).
  const std::string state = dir.path() + "/state";
  std::filesystem::rename(state, state + ".moved");
  std::ofstream(state) << "not a folder";
  EXPECT_GE(wait_for("gstab_checkpoint_failures_total", [](double v) { return v >= 3; }), 3);
  EXPECT_NE(daemon->Log().find("cannot write checkpoint"), std::string::npos) << daemon->Log();
  EXPECT_NE(daemon->Log().find("Not a directory"), std::string::npos) << daemon->Log();
  // Every job whose checkpoint failed is named, not only the first.
  EXPECT_NE(daemon->Log().find("the checkpoints of 1 other jobs failed too: saved2"),
            std::string::npos)
      << daemon->Log();
  // Once, not at every interval while the failures go on.
  const std::string log = daemon->Log();
  const size_t first = log.find("cannot write checkpoint");
  EXPECT_EQ(log.find("cannot write checkpoint", first + 1), std::string::npos) << log;

  std::filesystem::remove(state);
  std::filesystem::rename(state + ".moved", state);
  const double failed_at = value("gstab_checkpoint_last_success_timestamp_seconds");
  EXPECT_GT(wait_for("gstab_checkpoint_last_success_timestamp_seconds",
                     [&](double v) { return v > failed_at; }),
            failed_at);
  EXPECT_TRUE(daemon->WaitForLog("checkpoints are written again")) << daemon->Log();
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
}

// Without a --state_dir nothing is written: the time of the last checkpoint stays 0 (an alert on
// its age would otherwise read checkpoints that never were).
TEST(E2eCheckpointMetricsTest, WithoutAStateDirNoCheckpointIsClaimed) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(
      dir.path(), {"--metrics_port=0", "--checkpoint_interval_s=1", "--state_dir="});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<int> port = daemon->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  auto worker = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("unsaved"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  absl::SleepFor(absl::Milliseconds(2500));  // two checkpoint rounds
  absl::StatusOr<testing::HttpResponse> r = HttpRequest(*port, "GET", "/metrics");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->body.find("\ngstab_checkpoint_last_success_timestamp_seconds 0\n"),
            std::string::npos)
      << r->body;
}

}  // namespace
}  // namespace gstab
