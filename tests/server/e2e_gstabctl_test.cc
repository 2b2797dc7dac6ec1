// End-to-end: gstabctl's commands against a real gstabd that the real example trainer has
// stepped: status, events, config, export and import, top, health, and its refusals.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client_lib/gstab.h"
#include "gtest/gtest.h"
#include "tests/server/e2e_trainer_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

class E2eGstabctlTest : public testing::TrainerDaemonTest {};

TEST_F(E2eGstabctlTest, CommandsAgainstALiveDaemon) {
  Train("ctl-job", {"--steps=150", "--spike_steps=75", "--print_every=1000"});
  auto [rc, status] = Ctl("status");
  EXPECT_EQ(rc, 0) << status;
  EXPECT_NE(status.find("ctl-job"), std::string::npos) << status;
  EXPECT_NE(status.find("stabilize"), std::string::npos) << status;
  auto [jrc, json] = Ctl("--json status");
  EXPECT_EQ(jrc, 0);
  EXPECT_NE(json.find("\"job\":\"ctl-job\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"steps\":\"150\""), std::string::npos) << json;

  auto [erc, events] = Ctl("events --job=ctl-job");
  EXPECT_EQ(erc, 0);
  EXPECT_NE(events.find("SPIKE     job=ctl-job step=75"), std::string::npos) << events;

  auto [crc, set] = Ctl("config set --job=ctl-job policy=clip clip.max_norm=0.25");
  EXPECT_EQ(crc, 0) << set;
  auto [src, after] = Ctl("status");
  EXPECT_NE(after.find("clip"), std::string::npos) << after;
  auto [evrc, changed] = Ctl("events --job=ctl-job");  // the change, field by field
  EXPECT_NE(changed.find("version 2: policy clip; changed: "), std::string::npos) << changed;
  EXPECT_NE(changed.find("clip.max_norm 1 (now: 0.25)"), std::string::npos) << changed;
  auto [brc, bad] = Ctl("config set --job=ctl-job clip.max_norm=-3");
  EXPECT_EQ(brc, 1);
  EXPECT_NE(bad.find("clip.max_norm"), std::string::npos) << bad;
  // The whole configuration, as config set takes it back; the same again is no new version.
  auto [shrc, shown] = Ctl("config show --job=ctl-job");
  EXPECT_EQ(shrc, 0) << shown;
  EXPECT_NE(shown.find("configuration version 2"), std::string::npos) << shown;
  EXPECT_NE(shown.find("clip.max_norm=0.25\n"), std::string::npos) << shown;
  EXPECT_NE(shown.find("policy=POLICY_CLIP\n"), std::string::npos) << shown;
  std::string again = "config set --job=ctl-job";
  for (absl::string_view line : absl::StrSplit(shown, '\n')) {
    if (!line.empty() && line[0] != '#') absl::StrAppend(&again, " ", line);
  }
  auto [agrc, same] = Ctl(again);
  EXPECT_EQ(agrc, 0) << same;
  EXPECT_NE(same.find("configuration unchanged (version 2)"), std::string::npos) << same;
  auto [orc, only] = Ctl("status --job=absent");
  EXPECT_EQ(orc, 1);
  EXPECT_NE(only.find("no job 'absent'"), std::string::npos) << only;
  auto [prc, preset] = Ctl("config set --job=ctl-job policy=stabilize-stable-spam");
  EXPECT_EQ(prc, 2);
  EXPECT_NE(preset.find("stabilize.preset=stable-spam"), std::string::npos) << preset;

  const std::string file = dir_.path() + "/ctl.state";
  EXPECT_EQ(Ctl("export --job=ctl-job --out=" + file).first, 0);
  EXPECT_GT(std::filesystem::file_size(file), 0u);
  // An import brings the exported configuration back; one with --keep_config keeps the job's.
  EXPECT_EQ(Ctl("config set --job=ctl-job clip.max_norm=0.5").first, 0);
  auto [irc, imported] = Ctl("import --job=ctl-job --in=" + file);
  EXPECT_EQ(irc, 0) << imported;
  EXPECT_NE(Ctl("config show --job=ctl-job").second.find("clip.max_norm=0.25\n"),
            std::string::npos);
  // The import's change is an event, as config set's is.
  EXPECT_NE(Ctl("events --job=ctl-job")
                .second.find("version 4: policy clip; changed: clip.max_norm 0.5 (now: 0.25)"),
            std::string::npos);
  EXPECT_EQ(Ctl("config set --job=ctl-job clip.max_norm=0.75").first, 0);
  auto [krc, kept] = Ctl("import --keep_config --job=ctl-job --in=" + file);
  EXPECT_EQ(krc, 0) << kept;
  EXPECT_NE(Ctl("config show --job=ctl-job").second.find("clip.max_norm=0.75\n"),
            std::string::npos);
  // One event for version 5 (config set's), none for the import that kept it.
  const std::string after_keep = Ctl("events --job=ctl-job").second;
  const size_t first = after_keep.find("version 5: ");
  EXPECT_NE(first, std::string::npos) << after_keep;
  EXPECT_EQ(after_keep.find("version 5: ", first + 1), std::string::npos) << after_keep;
  EXPECT_EQ(after_keep.find("version 6"), std::string::npos) << after_keep;

  auto [trc, top] = Ctl("top --iterations=1");
  EXPECT_EQ(trc, 0);
  EXPECT_NE(top.find("ctl-job"), std::string::npos);
  EXPECT_NE(top.find("spikes 1"), std::string::npos) << top;
  EXPECT_EQ(Ctl("top --iterations=1 --job=ctl-job").first, 0);
  auto [torc, other] = Ctl("top --iterations=2 --interval_ms=10 --job=ctl-jobs");
  EXPECT_EQ(torc, 1) << other;
  EXPECT_NE(other.find("gstabd held no job 'ctl-jobs' in any of the 2 frames"), std::string::npos)
      << other;

  auto [nrc, nojob] = Ctl("config set --job=absent policy=clip");
  EXPECT_EQ(nrc, 1);
  EXPECT_NE(nojob.find("no job 'absent'"), std::string::npos) << nojob;
  auto [arc, absent] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                         " --socket=" + dir_.path() + "/none.sock status");
  EXPECT_EQ(arc, 1);
  EXPECT_NE(absent.find("no gstabd answers"), std::string::npos) << absent;
  EXPECT_EQ(Ctl("frobnicate").first, 2);
  // A bad command line is told apart from a failure (2, not 1), before gstabd is asked.
  EXPECT_EQ(Ctl("config set policy=clip").first, 2);                  // no --job
  EXPECT_EQ(Ctl("config set --job=ctl-job clip.max_norm").first, 2);  // not KEY=VALUE
  EXPECT_EQ(Ctl("top --interval_ms=0").first, 2);
  EXPECT_EQ(Ctl("export --out=" + file).first, 2);
  auto [frc, flag] = Ctl("status --jobs=ctl-job");  // abseil's own parser exits 1
  EXPECT_EQ(frc, 2);
  EXPECT_NE(flag.find("unknown flag --jobs"), std::string::npos) << flag;
  auto [vrc, value] = Ctl("--timeout_s=2s status");
  EXPECT_EQ(vrc, 2);
  EXPECT_NE(value.find("--timeout_s: '2s' is not a value it takes"), std::string::npos) << value;
  EXPECT_EQ(Ctl("status --job").first, 2);  // no value
  // A value forgotten before another flag: not that flag taken as the value.
  auto [mrc, missing] = Ctl("events --job --follow");
  EXPECT_EQ(mrc, 2);
  EXPECT_NE(missing.find("--job needs a value, and '--follow' after it is a flag"),
            std::string::npos)
      << missing;
  auto [grc, stray] = Ctl("status --follow");  // a flag of another command
  EXPECT_EQ(grc, 2);
  EXPECT_NE(stray.find("status takes no --follow (its flags: --all, --job)"), std::string::npos)
      << stray;
  EXPECT_EQ(Ctl("health --job=ctl-job").first, 2);
  // So is one a flag file sets (an operator's own, kept for another command).
  const std::string flags = dir_.path() + "/ops.flags";
  std::ofstream(flags) << "--follow\n--timeout_s=5\n";
  auto [ffrc, filed] = Ctl("--flagfile=" + flags + " status");
  EXPECT_EQ(ffrc, 2) << filed;
  EXPECT_NE(filed.find("status takes no --follow"), std::string::npos) << filed;
  std::ofstream(flags) << "--timeout_s=5\n--job=ctl-job\n";
  EXPECT_EQ(Ctl("--flagfile=" + flags + " status").first, 0);
  EXPECT_EQ(Ctl("--job= status").first, 2);  // an empty name
  EXPECT_EQ(Ctl("--nojson --timeout_s 5 status --all").first, 0);
  auto [urc, unknown] = Ctl("events --job=absent");  // as status says of a job it lacks
  EXPECT_EQ(urc, 1) << unknown;
  EXPECT_NE(unknown.find("no job 'absent'"), std::string::npos) << unknown;
  // Followed, it waits for the job (a watcher started first), saying so: until the job comes
  // and steps, here at once; a misspelt name would otherwise wait in silence.
  testing::Subprocess watcher = *testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                                             "--socket=" + daemon_->socket(),
                                                             "events", "--job=later", "--follow"});
  absl::SleepFor(absl::Milliseconds(500));
  Train("later", {"--steps=3", "--print_every=1000"});
  watcher.Signal(SIGTERM);
  const std::string waited = watcher.ReadAll();
  EXPECT_NE(waited.find("no job 'later' and no checkpoint of it yet: waiting for its events"),
            std::string::npos)
      << waited;
  EXPECT_NE(waited.find("ATTACH"), std::string::npos) << waited;
  (void)watcher.Wait(absl::Seconds(10));
  auto [hrc, help] = Ctl("--help");         // lists the commands and succeeds
  EXPECT_EQ(hrc, 0) << help;
  EXPECT_NE(help.find("  export --job=J --out=FILE|-\n"), std::string::npos) << help;
  EXPECT_NE(help.find("  --timeout_s\n"), std::string::npos) << help;
  // --json prints every field, the false and zero ones too.
  auto [jsrc, full] = Ctl("--json status");
  EXPECT_EQ(jsrc, 0);
  EXPECT_NE(full.find("\"diverging\":false"), std::string::npos) << full;
  // An export that cannot be written leaves nothing behind and says so.
  auto [xrc, unwritable] = Ctl("export --job=ctl-job --out=" + dir_.path() + "/no/such/dir/x");
  EXPECT_EQ(xrc, 1);
  EXPECT_NE(unwritable.find("cannot write"), std::string::npos) << unwritable;
}

// A step that waits for a local worker: `gstabctl status` names the ranks it waits for.
TEST_F(E2eGstabctlTest, StatusNamesTheLocalWorkersAStepWaitsFor) {
  AttachOptions o = testing::JobOptions("straggling");
  o.local_world_size = 3;
  std::vector<std::unique_ptr<testing::TestWorker>> workers;
  for (uint32_t rank = 0; rank < 3; ++rank) {
    o.local_rank = rank;
    auto w = testing::TestWorker::Create(daemon_->socket(), o);
    ASSERT_TRUE(w.ok()) << w.status();
    (*w)->Fill(1, rank);
    workers.push_back(*std::move(w));
  }
  absl::StatusOr<v1::StepResponse> r1;
  std::thread t([&] { r1 = workers[1]->client().Step(1); });
  std::string status;
  for (int i = 0; i < 200 && status.find("waits") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    status = Ctl("status").second;
  }
  EXPECT_NE(status.find("straggling: step 1 waits for local ranks 0,2 (1 of 3 arrived)"),
            std::string::npos)
      << status;
  std::thread t2([&] { (void)workers[2]->client().Step(1); });
  EXPECT_TRUE(workers[0]->client().Step(1).ok());
  t.join();
  t2.join();
  EXPECT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(Ctl("status").second.find("waits"), std::string::npos);
}

// The container probe: `gstabctl health` succeeds, silently, while gstabd serves, and fails
// with a reason once it has stopped.
TEST_F(E2eGstabctlTest, HealthFollowsTheDaemon) {
  auto [rc, out] = Ctl("health");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "");
  auto [jrc, json] = Ctl("--json health");
  EXPECT_EQ(jrc, 0) << json;
  EXPECT_EQ(json, "{\"status\":\"SERVING\"}\n");
  // A followed event stream ends only when gstabd goes, and says so (exit 1). A worker's
  // attach gives the follower an event to print first, which says it has subscribed.
  auto worker = testing::TestWorker::Create(daemon_->socket(), testing::JobOptions("followed"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  absl::StatusOr<testing::Subprocess> follower =
      testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                  "--socket=" + daemon_->socket(), "events", "--follow"});
  ASSERT_TRUE(follower.ok()) << follower.status();
  absl::StatusOr<std::string> first = follower->ReadLine(absl::Seconds(30));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_NE(first->find("followed"), std::string::npos) << *first;
  ASSERT_EQ(daemon_->Stop().value_or(-1), 0);
  const std::string followed = *first + "\n" + follower->ReadAll();
  EXPECT_EQ(follower->Wait(absl::Seconds(10)).value_or(-1), 1) << followed;
  EXPECT_NE(followed.find("the event stream ended: gstabd stopped"), std::string::npos) << followed;
  auto [drc, down] = Ctl("health");
  EXPECT_EQ(drc, 1) << down;
  EXPECT_NE(down.find("no gstabd answers"), std::string::npos) << down;
  auto [jdrc, jdown] =
      testing::RunShell(testing::BinaryPath("tools/gstabctl") + " --socket=" + daemon_->socket() +
                        " --json version 2>/dev/null");
  EXPECT_EQ(jdrc, 1) << jdown;
  EXPECT_EQ(jdown, "{\"gstabctl\":\"" GSTAB_VERSION "\"}\n");
}

// `version`: gstabctl's release and the gstabd's, with its host and its instance, which tells
// which workers share a node; still gstabctl's own when no gstabd answers.
TEST_F(E2eGstabctlTest, VersionNamesBothReleasesAndGstabdsInstance) {
  auto [rc, out] = Ctl("version");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StartsWith(out, "gstabctl " GSTAB_VERSION "\ngstabd " GSTAB_VERSION " on "))
      << out;
  auto [jrc, json] = Ctl("--json version");
  EXPECT_EQ(jrc, 0) << json;
  const std::string key = "\"instance\":\"";
  const size_t at = json.find(key);
  ASSERT_NE(at, std::string::npos) << json;
  const std::string instance = json.substr(at + key.size(), 32);
  EXPECT_EQ(instance.find_first_not_of("0123456789abcdef"), std::string::npos) << json;
  EXPECT_EQ(json.substr(at + key.size() + 32, 1), "\"") << json;
  EXPECT_NE(out.find(", instance " + instance + ", started 20"), std::string::npos) << out;
  ASSERT_EQ(daemon_->Stop().value_or(-1), 0);
  auto [drc, down] = Ctl("version");
  EXPECT_EQ(drc, 1) << down;
  EXPECT_NE(down.find("gstabctl " GSTAB_VERSION "\n"), std::string::npos) << down;
  EXPECT_NE(down.find("no gstabd answers"), std::string::npos) << down;
}

// Without --socket, gstabctl dials $GSTAB_SOCKET (a node whose gstabd has another socket).
TEST_F(E2eGstabctlTest, TheSocketComesFromGstabSocketWhenNotGiven) {
  auto [rc, out] = testing::RunShell("GSTAB_SOCKET=" + daemon_->socket() + " " +
                                     testing::BinaryPath("tools/gstabctl") + " health");
  EXPECT_EQ(rc, 0) << out;
  auto [none, why] = testing::RunShell("GSTAB_SOCKET=" + dir_.path() + "/elsewhere.sock " +
                                       testing::BinaryPath("tools/gstabctl") + " health");
  EXPECT_EQ(none, 1) << why;
  EXPECT_NE(why.find("elsewhere.sock"), std::string::npos) << why;
  // A --socket that can be neither a socket path nor HOST:PORT is a malformed argument (2).
  auto [brc, bad] =
      testing::RunShell(testing::BinaryPath("tools/gstabctl") + " --socket=node1:99999 health");
  EXPECT_EQ(brc, 2) << bad;
  EXPECT_NE(bad.find("--socket: 'node1:99999' is neither HOST:PORT"), std::string::npos) << bad;
  // So do the C++ and C clients given no address.
  setenv("GSTAB_SOCKET", daemon_->socket().c_str(), 1);
  auto client = Client::Connect("");
  EXPECT_TRUE(client.ok()) << client.status();
  gstab_client* c = nullptr;
  EXPECT_EQ(gstab_connect(nullptr, &c), GSTAB_OK) << gstab_last_error();
  gstab_client_destroy(c);
  unsetenv("GSTAB_SOCKET");
}

// Where `export --out` names something other than a regular file it writes there rather than
// replace it (as root, --out=/dev/null would have become a file); a symbolic link and a file's
// mode stay; `-` is stdout and stdin. Output that cannot be written fails the command.
TEST_F(E2eGstabctlTest, ExportWritesThroughWhatIsThereAndFailsWhenOutputIsLost) {
  Train("files", {"--steps=40"});
  const std::string ctl = testing::BinaryPath("tools/gstabctl") + " --socket=" + daemon_->socket();
  const std::string real = dir_.path() + "/real.state", link = dir_.path() + "/link.state";
  ASSERT_EQ(Ctl("export --job=files --out=" + real).first, 0);
  struct stat st;
  ASSERT_EQ(::stat(real.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);  // new: the user's alone, whatever the umask allows
  ::chmod(real.c_str(), 0640);
  std::filesystem::create_symlink(real, link);
  auto [lrc, lout] = Ctl("export --job=files --out=" + link);
  EXPECT_EQ(lrc, 0) << lout;
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  ASSERT_EQ(::stat(real.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  const std::string fifo = dir_.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);  // the state fits its buffer
  ASSERT_GE(reader, 0);
  auto [frc, fout] = Ctl("export --job=files --out=" + fifo);
  EXPECT_EQ(frc, 0) << fout;
  EXPECT_TRUE(std::filesystem::is_fifo(fifo));
  char state[4096];
  EXPECT_EQ(::read(reader, state, sizeof state), std::filesystem::file_size(real));
  ::close(reader);
  auto [prc, piped] = testing::RunShell(ctl + " export --job=files --out=- | " + ctl +
                                        " import --job=files --in=-");
  EXPECT_EQ(prc, 0) << piped;
  EXPECT_NE(piped.find("imported"), std::string::npos) << piped;
  // A reader of the state gone before it is written (it closes its end while gstabctl waits a
  // second to start): the exit of any write to a closed pipe
  // (141), silent, as `events` and `status` give.
  auto [grc, gone] =
      testing::RunShell("{ sleep 1; " + ctl + " export --job=files --out=-; echo rc=$? >&2; } | " +
                        "{ exec 0<&-; sleep 3; }");
  EXPECT_NE(gone.find("rc=141"), std::string::npos) << gone;
  EXPECT_EQ(gone.find("Broken pipe"), std::string::npos) << gone;
  auto [urc, unknown] = Ctl("job list");  // the command first, then its arguments
  EXPECT_EQ(urc, 2) << unknown;
  EXPECT_NE(unknown.find("unknown command 'job'"), std::string::npos) << unknown;
  // The state on stdout, and what was done on stderr, as JSON under --json.
  auto [jrc, done] = testing::RunShell(ctl + " --json export --job=files --out=- 2>&1 >/dev/null");
  EXPECT_EQ(jrc, 0) << done;
  EXPECT_EQ(done.rfind("{", 0), 0u) << done;
  EXPECT_NE(done.find("\"out\":\"-\""), std::string::npos) << done;
  auto [zrc, zero] = Ctl("import --job=files --in=/dev/zero");
  EXPECT_EQ(zrc, 1) << zero;
  EXPECT_NE(zero.find("more than any state gstabd takes"), std::string::npos) << zero;
  auto [src, full] = Ctl("--json status > /dev/full");
  EXPECT_EQ(src, 1) << full;
  EXPECT_NE(full.find("cannot write to stdout"), std::string::npos) << full;
  EXPECT_EQ(Ctl("events --job='my_run!'").first, 2);  // a name no job can have
}

// What export writes through rather than replaces: a symbolic link to nothing is refused (and
// stays); /dev/stdout redirected to a file appends there (`>> log`), the state alone. A folder
// that cannot take the file is refused before the job is touched, and the job is not held
// attached while a slow reader takes the state.
TEST_F(E2eGstabctlTest, ExportWritesWhereItIsToldAndHoldsNoSessionWhileWriting) {
  Train("writes", {"--steps=20"});
  const std::string ctl = testing::BinaryPath("tools/gstabctl") + " --socket=" + daemon_->socket();
  const std::string real = dir_.path() + "/real.state", dangling = dir_.path() + "/dangling";
  ASSERT_EQ(Ctl("export --job=writes --out=" + real).first, 0);
  const uintmax_t size = std::filesystem::file_size(real);
  std::filesystem::create_symlink("made.state", dangling);  // relative to the link's folder
  auto [drc, dout] = Ctl("export --job=writes --out=" + dangling);
  EXPECT_EQ(drc, 1) << dout;
  EXPECT_NE(dout.find("is a symbolic link to nothing"), std::string::npos) << dout;
  EXPECT_TRUE(std::filesystem::is_symlink(dangling));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/made.state"));

  const std::string log = dir_.path() + "/log";
  std::ofstream(log) << "header\n";
  auto [arc, aout] =
      testing::RunShell(ctl + " export --job=writes --out=/dev/stdout >> " + log + " 2>/dev/null");
  EXPECT_EQ(arc, 0) << aout;
  EXPECT_EQ(std::filesystem::file_size(log), size + 7) << "not appended, or more than the state";

  auto [nrc, nowhere] = Ctl("export --job=writes --out=" + dir_.path() + "/no/such/x.state");
  EXPECT_EQ(nrc, 1) << nowhere;
  EXPECT_NE(nowhere.find("its folder"), std::string::npos) << nowhere;

  // A FIFO nobody reads yet: gstabctl waits to open it, detached already, so the job can go.
  const std::string fifo = dir_.path() + "/slow";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto observers_gone = [&] {
    const std::string events = Ctl("events --job=writes --recent=100").second;
    size_t n = 0;
    for (size_t at = 0; (at = events.find("observer: detached", at)) != std::string::npos; ++at)
      ++n;
    return n;
  };
  const size_t before = observers_gone();
  absl::StatusOr<testing::Subprocess> slow = testing::Subprocess::Start(
      {testing::BinaryPath("tools/gstabctl"), "--socket=" + daemon_->socket(), "export",
       "--job=writes", "--out=" + fifo});
  ASSERT_TRUE(slow.ok()) << slow.status();
  // Its observer session has come and gone (`events` takes none).
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (observers_gone() == before && absl::Now() < until) absl::SleepFor(absl::Milliseconds(100));
  const std::pair<int, std::string> forgot = Ctl("forget --job=writes");
  EXPECT_EQ(forgot.first, 0) << "the export held the job attached: " << forgot.second;
  const int reader = ::open(fifo.c_str(), O_RDONLY);
  ASSERT_GE(reader, 0);
  std::string got(size + 1, '\0');
  size_t read_bytes = 0;
  for (ssize_t n; (n = ::read(reader, got.data() + read_bytes, got.size() - read_bytes)) > 0;) {
    read_bytes += static_cast<size_t>(n);
  }
  ::close(reader);
  EXPECT_EQ(read_bytes, size);
  EXPECT_EQ(slow->Wait(absl::Seconds(10)).value_or(-1), 0) << slow->ReadAll();
}

// `import` of a state whose groups the job's workers do not register (another group naming than
// the saved run's): taken, but said, as the answer counts them; one of the same groups is not.
TEST_F(E2eGstabctlTest, ImportSaysWhichGroupsNoWorkerRegisters) {
  auto worker = testing::TestWorker::Create(daemon_->socket(), testing::JobOptions("renamed"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  absl::StatusOr<std::string> exported = (*worker)->client().ExportState();
  ASSERT_TRUE(exported.ok()) << exported.status();
  const std::string same = dir_.path() + "/same.state", other = dir_.path() + "/other.state";
  std::ofstream(same) << *exported;
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  for (v1::GroupState& g : *state.mutable_groups()) g.set_name("module." + g.name());
  state.clear_checksum();
  std::ofstream(other) << state.SerializeAsString();
  auto [src, said] = Ctl("import --job=renamed --in=" + same);
  EXPECT_EQ(src, 0) << said;
  EXPECT_EQ(said.find("not registered"), std::string::npos) << said;
  auto [orc, warned] = Ctl("import --job=renamed --in=" + other);
  EXPECT_EQ(orc, 0) << warned;
  EXPECT_NE(warned.find(absl::StrCat(state.groups_size(),
                                     " of the state's groups are not "
                                     "registered by any worker of job renamed on this node "
                                     "(first 'module.")),
            std::string::npos)
      << warned;
  auto [jrc, json] = Ctl("--json import --job=renamed --in=" + other + " 2>/dev/null");
  EXPECT_EQ(jrc, 0) << json;
  EXPECT_NE(json.find(absl::StrCat("\"unregistered_groups\":", state.groups_size())),
            std::string::npos)
      << json;
}

// `events --follow | head -1`: once head has its line, gstabctl ends while no event comes,
// rather than hold one of the caller's event streams (--max_event_streams) until the next one.
TEST_F(E2eGstabctlTest, AFollowedStreamEndsWhenItsReaderGoes) {
  Train("quiet", {"--steps=5"});
  const absl::Time start = absl::Now();
  auto [rc, out] = testing::RunShell("timeout 20 " + testing::BinaryPath("tools/gstabctl") +
                                     " --socket=" + daemon_->socket() +
                                     " events --follow --job=quiet --recent=1 | head -1");
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << out;
  EXPECT_NE(out.find("quiet"), std::string::npos) << out;
}

// `top --job=J` until interrupted, of a job gstabd neither holds nor keeps (a misspelt name),
// says under its frames that it waits for it, rather than show an empty view in silence.
TEST_F(E2eGstabctlTest, TopOfAJobNotThereSaysItWaitsForIt) {
  auto top = testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                         "--socket=" + daemon_->socket(), "--interval_ms=100",
                                         "top", "--job=no-such-run"});
  ASSERT_TRUE(top.ok()) << top.status();
  bool told = false;
  const absl::Time until = absl::Now() + absl::Seconds(10);  // frames come every 100 ms
  for (absl::StatusOr<std::string> line = top->ReadLine(absl::Seconds(10));
       line.ok() && !told && absl::Now() < until; line = top->ReadLine(absl::Seconds(10))) {
    told = line->find("holds no job 'no-such-run' and no checkpoint of it yet: waiting for it") !=
           std::string::npos;
  }
  EXPECT_TRUE(told);
  top->Signal(SIGTERM);
  (void)top->Wait(absl::Seconds(5));
}

// A job `top --job=J` showed, forgotten since (`gstabctl forget`): the frames say so, rather
// than go blank in silence.
TEST_F(E2eGstabctlTest, TopOfAJobForgottenSinceSaysSo) {
  Train("shown", {"--steps=5"});
  auto top = testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                         "--socket=" + daemon_->socket(), "--interval_ms=100",
                                         "top", "--job=shown"});
  ASSERT_TRUE(top.ok()) << top.status();
  auto says = [&](const std::string& text) {
    const absl::Time until = absl::Now() + absl::Seconds(10);  // frames come every 100 ms
    for (absl::StatusOr<std::string> line = top->ReadLine(absl::Seconds(10));
         line.ok() && absl::Now() < until; line = top->ReadLine(absl::Seconds(10))) {
      if (line->find(text) != std::string::npos) return true;
    }
    return false;
  };
  EXPECT_TRUE(says("shown"));
  const std::pair<int, std::string> forgot = Ctl("forget --job=shown");
  ASSERT_EQ(forgot.first, 0) << forgot.second;
  EXPECT_TRUE(says("gstabd no longer holds job 'shown' nor a checkpoint of it: waiting for it"));
  top->Signal(SIGTERM);
  (void)top->Wait(absl::Seconds(5));
}

// `top` until interrupted outlives a gstabd restart (a rollout): the frames stop while none
// serves, and go on once one does.
TEST_F(E2eGstabctlTest, TopUntilInterruptedWaitsForARestartedGstabd) {
  // Also for one not there yet (a view opened during a rollout).
  auto early = testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                           "--socket=" + dir_.path() + "/later.sock",
                                           "--interval_ms=100", "--timeout_s=1", "top"});
  ASSERT_TRUE(early.ok()) << early.status();
  absl::StatusOr<std::string> waiting = early->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  EXPECT_NE(waiting->find("(trying again)"), std::string::npos) << *waiting;
  early->Signal(SIGTERM);
  (void)early->Wait(absl::Seconds(5));
  auto top = testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                         "--socket=" + daemon_->socket(), "--json",
                                         "--interval_ms=200", "--timeout_s=1", "top"});
  ASSERT_TRUE(top.ok()) << top.status();
  absl::StatusOr<std::string> frame = top->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(frame.ok()) << frame.status();
  ASSERT_EQ(daemon_->Stop().value_or(-1), 0);
  bool told = false;
  while (!told) {  // the frames before the stop, then that it stopped answering
    absl::StatusOr<std::string> line = top->ReadLine(absl::Seconds(15));
    ASSERT_TRUE(line.ok()) << line.status();
    told = line->find("(trying again)") != std::string::npos;
  }
  // Two frames' time at least (each waits up to 1 s to connect): the outage is said once.
  absl::SleepFor(absl::Seconds(3));
  auto again = testing::DaemonProcess::Start(dir_.path());
  ASSERT_TRUE(again.ok()) << again.status();
  // Then that it answers again, before the next frame; the outage said again only where its
  // reason changed (gstabd's stop cancelling the call, then no gstabd to connect to), not at
  // each of the dozen frames since.
  absl::StatusOr<std::string> next = top->ReadLine(absl::Seconds(15));
  int retold = 0;
  for (; next.ok() && next->find("(trying again)") != std::string::npos; ++retold) {
    next = top->ReadLine(absl::Seconds(15));
  }
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, "gstabctl: gstabd answers again");
  EXPECT_LE(retold, 3);
  absl::StatusOr<std::string> frame_again = top->ReadLine(absl::Seconds(15));
  ASSERT_TRUE(frame_again.ok()) << frame_again.status();
  EXPECT_EQ(frame_again->rfind("{", 0), 0u) << *frame_again;
  top->Signal(SIGTERM);
  (void)top->Wait(absl::Seconds(5));
  daemon_ = std::make_unique<testing::DaemonProcess>(*std::move(again));
}

}  // namespace
}  // namespace gstab
