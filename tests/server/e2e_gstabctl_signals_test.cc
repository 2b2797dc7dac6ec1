// End-to-end: gstabctl and the client library under signals and a frozen gstabd. An observer
// command interrupted (Ctrl-C, SIGTERM, a closed pipe) detaches its session before it dies, also
// mid-attach, and signals the caller ignored stay ignored; a client destroyed while gstabd is
// frozen does not wait for its keep-alive call.
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "client_lib/client.h"
#include "gtest/gtest.h"
#include "tests/server/e2e_trainer_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

class E2eGstabctlTest : public testing::TrainerDaemonTest {
 protected:
  // gstabctl exporting `job` to `out` under strace, which injects `inject` ("delay_exit=...")
  // into its calls of `syscall`.
  absl::StatusOr<testing::Subprocess> TracedExport(const std::string& syscall,
                                                   const std::string& inject,
                                                   const std::string& job, const std::string& out) {
    return testing::Subprocess::Start(
        {"/usr/bin/strace", "-f", "-q", "-o", "/dev/null", "-e", "trace=" + syscall, "-e",
         "inject=" + syscall + ":" + inject, testing::BinaryPath("tools/gstabctl"),
         "--socket=" + daemon_->socket(), "export", "--job=" + job, "--out=" + out});
  }
};

// Ctrl-C while gstabctl is attached as an observer (its export's request held 1.5 s by strace,
// which delays the return of its seventh sendmsg: the preface, the settings' ack, the connection
// check, a window update, the attach, the attach's Identify, then the export; seen with
// `strace -f -s 600 -e trace=sendmsg`) ends its session at once, not at its
// lease (30 s): `forget` works right after. gstabctl still dies of the signal. (Its detach waits
// for the held request, within the 2 s gstabctl gives it.)
TEST_F(E2eGstabctlTest, AnInterruptedObserverCommandDetachesBeforeItDies) {
  Train("interrupted", {"--steps=5", "--print_every=1000"});
  absl::StatusOr<testing::Subprocess> traced = TracedExport(
      "sendmsg", "delay_exit=1500000:when=7", "interrupted", dir_.path() + "/interrupted.state");
  ASSERT_TRUE(traced.ok()) << traced.status();
  bool attached = false;  // then held sending its export
  for (int i = 0; i < 200 && !attached; ++i) {
    attached = Ctl("events --job=interrupted").second.find("observer\n") != std::string::npos;
    if (!attached) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(attached);
  const pid_t ctl = testing::TracedChild(traced->pid());
  ASSERT_NE(ctl, 0) << "gstabctl under strace";
  ASSERT_EQ(kill(ctl, SIGINT), 0);
  EXPECT_EQ(traced->Wait(absl::Seconds(15)).value_or(-1), 128 + SIGINT);  // strace passes it on
  auto [rc, forgot] = Ctl("forget --job=interrupted");
  EXPECT_EQ(rc, 0) << forgot;
  EXPECT_NE(Ctl("events --job=interrupted").second.find("observer: "), std::string::npos);
}

// Ctrl-C while an export writes its file leaves no temporary file behind (its `.partial` file
// beside the output, which nothing would remove): strace holds gstabctl's fsync of it 4 s, and the
// signal comes while it waits.
TEST_F(E2eGstabctlTest, AnInterruptedExportLeavesNoTemporaryFile) {
  Train("cut-short", {"--steps=5", "--print_every=1000"});
  const std::string folder = dir_.path() + "/exports";
  ASSERT_EQ(mkdir(folder.c_str(), 0700), 0);
  absl::StatusOr<testing::Subprocess> traced =
      TracedExport("fsync", "delay_exit=4000000:when=1", "cut-short", folder + "/cut-short.state");
  ASSERT_TRUE(traced.ok()) << traced.status();
  auto entries = [&] {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(folder)) {
      names.push_back(e.path().filename().string());
    }
    return names;
  };
  bool writing = false;  // the temporary file is there: in its fsync
  for (int i = 0; i < 100 && !writing; ++i) {
    for (const std::string& name : entries()) writing |= name.find(".partial") != std::string::npos;
    if (!writing) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(writing);
  const pid_t ctl = testing::TracedChild(traced->pid());
  ASSERT_NE(ctl, 0) << "gstabctl under strace";
  ASSERT_EQ(kill(ctl, SIGINT), 0);
  EXPECT_EQ(traced->Wait(absl::Seconds(20)).value_or(-1), 128 + SIGINT);
  EXPECT_EQ(entries(), std::vector<std::string>{});
}

// `events` waits --timeout_s for each event, not for the whole stream: a reader slower than
// that to take its output (`| less`) still gets every event, the stream held meanwhile.
TEST_F(E2eGstabctlTest, AReaderSlowerThanTheTimeoutGetsEveryEvent) {
  // 1,024 ATTACH and DETACH events of 8 jobs (all gstabd keeps of them), about 100 KB of JSON:
  // more than a pipe holds.
  for (int job = 0; job < 8; ++job) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(daemon_->socket());
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 64; ++i) {
      ASSERT_TRUE((*c)->Attach(testing::JobOptions("slow-" + std::to_string(job))).ok());
      ASSERT_TRUE((*c)->Detach().ok());
    }
  }
  auto [rc, out] = testing::RunShell(
      "{ " + testing::BinaryPath("tools/gstabctl") + " --socket=" + daemon_->socket() +
      " events --json --recent=1024 --timeout_s=1; echo \"exit $?\" >&2; } | (sleep 3; wc -l)");
  EXPECT_NE(out.find("exit 0"), std::string::npos) << out;
  EXPECT_NE(("\n" + out).find("\n1024\n"), std::string::npos) << out;  // wc -l's count
}

// A signal that comes while gstabctl's attach is in flight waits for its answer, and detaches
// the session gstabd made for it. strace holds the attach's answer back: it delays the return of
// gstabctl's fifth sendmsg (the preface, the settings' ack, the connection check, a window
// update, then the attach) by 3 s, and the signal comes 1 s in.
TEST_F(E2eGstabctlTest, ASignalDuringTheAttachDetachesTheSessionItMade) {
  Train("mid-attach", {"--steps=5", "--print_every=1000"});
  absl::StatusOr<testing::Subprocess> traced = TracedExport(
      "sendmsg", "delay_exit=3000000:when=5", "mid-attach", dir_.path() + "/mid-attach.state");
  ASSERT_TRUE(traced.ok()) << traced.status();
  absl::SleepFor(absl::Seconds(1));
  const pid_t ctl = testing::TracedChild(traced->pid());
  ASSERT_NE(ctl, 0) << "gstabctl under strace";
  ASSERT_EQ(kill(ctl, SIGINT), 0);
  EXPECT_EQ(traced->Wait(absl::Seconds(15)).value_or(-1), 128 + SIGINT);  // strace passes it on
  auto [rc, forgot] = Ctl("forget --job=mid-attach");  // no observer holds the job
  EXPECT_EQ(rc, 0) << forgot;
}

// A signal the caller ignores stays ignored (`nohup gstabctl events --follow &`; a script's
// background job ignores SIGINT), and a pipe's reader going mid-export leaves no session behind.
TEST_F(E2eGstabctlTest, IgnoredSignalsStayIgnoredAndAClosedPipeDetachesToo) {
  Train("piped", {"--steps=5", "--print_every=1000"});
  absl::StatusOr<testing::Subprocess> follow = testing::Subprocess::Start(
      {"/bin/sh", "-c",
       "trap '' HUP INT; echo ignoring; exec " + testing::BinaryPath("tools/gstabctl") +
           " --socket=" + daemon_->socket() + " events --follow --recent=0"});
  ASSERT_TRUE(follow.ok()) << follow.status();
  ASSERT_EQ(follow->ReadLine(absl::Seconds(10)).value_or(""), "ignoring");  // exec inherits it
  follow->Signal(SIGHUP);
  follow->Signal(SIGINT);
  EXPECT_FALSE(follow->Wait(absl::Milliseconds(500)).ok());  // still following
  follow->Signal(SIGTERM);
  EXPECT_EQ(follow->Wait(absl::Seconds(10)).value_or(-1), 128 + SIGTERM);

  // The reader closes its end at once: the write meets a closed pipe. gstabctl exits as at any
  // closed pipe (141, silent: e2e_gstabctl_test), and the session is gone.
  auto [rc, out] = testing::RunShell("{ sleep 1; " + testing::BinaryPath("tools/gstabctl") +
                                     " --socket=" + daemon_->socket() +
                                     " export --job=piped --out=-; } | (exec 0<&-; sleep 2)");
  EXPECT_EQ(out.find("Broken pipe"), std::string::npos) << out;
  auto [frc, forgot] = Ctl("forget --job=piped");
  EXPECT_EQ(frc, 0) << forgot;
}

// A C++ (or C) client destroyed while attached detaches, as the Python client does at exit:
// `forget` then works at once, rather than a lease later.
TEST_F(E2eGstabctlTest, ForgetWorksAtOnceOnceTheWorkersClientIsGone) {
  {
    auto worker = testing::TestWorker::Create(daemon_->socket(), testing::JobOptions("gone"));
    ASSERT_TRUE(worker.ok()) << worker.status();
    (*worker)->Fill(1, 1);
    ASSERT_TRUE((*worker)->client().Step(1).ok());
  }
  auto [rc, out] = Ctl("forget --job=gone");
  EXPECT_EQ(rc, 0) << out;
}

// On a frozen gstabd a client's destruction (which detaches) takes the detach's 3 s: a
// keep-alive call in flight is cancelled, not waited for (3 s more here, with this lease).
TEST(E2eClientExitTest, ADestroyedClientDoesNotWaitForAFrozenGstabdsKeepAlive) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--lease_ms=15000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attach(testing::JobOptions("frozen")).ok());
  // A keep-alive every 5 s (a third of the lease), each waiting up to 5 s for its answer.
  absl::SleepFor(absl::Seconds(4));
  ASSERT_TRUE(daemon->process().Stop());
  absl::SleepFor(absl::Seconds(2));  // the keep-alive call of 5 s in waits
  const absl::Time start = absl::Now();
  client->reset();
  const absl::Duration took = absl::Now() - start;
  daemon->process().Signal(SIGCONT);
  // Its detach's 3 s, and not also the rest of the keep-alive call's 5 s (about 6 s in all).
  EXPECT_LT(took, absl::Milliseconds(4500)) << "the client waited for its keep-alive call";
}

// A followed event stream whose gstabd stops answering (frozen here; a host gone is the same to
// the client) fails once its ping goes unanswered, rather than wait in silence for good; while
// gstabd answers, the pings (here every 2 s) keep it open.
TEST(E2eClientExitTest, AFollowedStreamEndsWhenGstabdStopsAnsweringItsPings) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<testing::Subprocess> follow = testing::Subprocess::Start(
      {"/usr/bin/env", "GSTAB_KEEPALIVE_MS=2000", "GSTAB_KEEPALIVE_TIMEOUT_MS=4000",
       testing::BinaryPath("tools/gstabctl"), "--socket=" + daemon->socket(), "events",
       "--follow"});
  ASSERT_TRUE(follow.ok()) << follow.status();
  EXPECT_FALSE(follow->Wait(absl::Seconds(8)).ok()) << "the stream ended while gstabd answered";
  ASSERT_TRUE(daemon->process().Stop());
  absl::StatusOr<int> code = follow->Wait(absl::Seconds(20));
  daemon->process().Signal(SIGCONT);
  ASSERT_TRUE(code.ok()) << "still following a gstabd that stopped answering";
  EXPECT_EQ(*code, 1);
  EXPECT_NE(follow->ReadAll().find("stopped answering"), std::string::npos);
}

}  // namespace
}  // namespace gstab
