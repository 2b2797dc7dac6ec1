// The checkpoint store: a state directory gstabd cannot write is refused at start, not found
// out at the first checkpoint with the statistics lost.
#include "server/state_store.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "server/state_codec.h"
#include "tests/server/job_a_state.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

// The jobs whose checkpoints LoadAll finds.
std::vector<std::string> LoadedJobs(StateStore* store) {
  absl::StatusOr<std::vector<StateStore::Stored>> all = store->LoadAll();
  EXPECT_TRUE(all.ok()) << all.status();
  std::vector<std::string> jobs;
  if (all.ok()) {
    for (const StateStore::Stored& stored : *all) jobs.push_back(stored.state.job());
  }
  return jobs;
}

using testing::JobA;

// Bytes that would parse into far more memory than themselves (64 MiB of empty groups or
// unknown fields: gigabytes) are refused before they are parsed, with or without a checksum.
TEST(StateStoreTest, AStateOfTooManyEntriesIsRefusedUnparsed) {
  v1::JobState wide = JobA(1);
  wide.clear_groups();
  for (size_t i = 0; i <= kMaxGroupsPerJob; ++i) wide.add_groups();
  absl::Status groups = DecodeJobState(EncodeJobState(wide), "the bytes").status();
  EXPECT_EQ(groups.code(), absl::StatusCode::kInvalidArgument) << groups;
  EXPECT_NE(groups.message().find("the bytes are not a gstab JobState gstabd could have written "
                                  "(more than 65536 groups: a job has at most 65536)"),
            std::string::npos)
      << groups;
  std::string unknown = "\x08\x01";  // an older gstabd's bytes: format_version first, unchecked
  for (int i = 0; i < (3 << 20); ++i) unknown.append("\xa0\x06\x00", 3);  // field 100: 0
  const absl::Status fields = DecodeJobState(unknown, "the bytes").status();
  EXPECT_EQ(fields.code(), absl::StatusCode::kInvalidArgument) << fields;
  EXPECT_NE(fields.message().find("(more than 2097152 fields in all)"), std::string::npos)
      << fields;
  // Fields inside a group (a wire type proto3 has not), skipped whole, would go uncounted.
  std::string grouped = "\x08\x01\xa3\x06";  // field 100 opens a group
  for (int i = 0; i < (1 << 20); ++i) grouped.append("\x08\x00", 2);
  grouped.append("\xa4\x06", 2);
  const absl::Status group = DecodeJobState(grouped, "the bytes").status();
  EXPECT_EQ(group.code(), absl::StatusCode::kInvalidArgument) << group;
  EXPECT_NE(group.message().find("(corrupt or truncated)"), std::string::npos) << group;
  // As many as gstabd writes are read.
  wide.mutable_groups()->RemoveLast();
  for (int i = 0; i < 64; ++i) {
    wide.add_config_history()->mutable_config()->set_policy(v1::POLICY_CLIP);
  }
  absl::StatusOr<v1::JobState> read = DecodeJobState(EncodeJobState(wide), "the bytes");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(static_cast<size_t>(read->groups_size()), kMaxGroupsPerJob);
  EXPECT_EQ(read->config_history_size(), 64);
}

// A checkpoint of another format version, or out of range, is set aside at start, not loaded.
// So is one whose configuration or job name gstabd would refuse.
TEST(StateStoreTest, ACheckpointOfAnotherFormatOrOutOfRangeIsSetAside) {
  testing::TempDir dir;
  StateStore store(dir.path() + "/state");
  ASSERT_TRUE(store.Init().ok());
  v1::JobState newer;
  newer.set_format_version(kJobStateFormatVersion + 1);
  newer.set_job("newer");
  ASSERT_TRUE(store.Save(newer).ok());
  v1::JobState wrong;
  wrong.set_format_version(kJobStateFormatVersion);
  wrong.set_job("wrong");
  wrong.set_last_step(uint64_t{1} << 63);  // past any step
  ASSERT_TRUE(store.Save(wrong).ok());
  // Hand edits gstabd would not have written: a configuration out of range, a job name that
  // `gstabctl forget` could not name.
  v1::JobState edited;
  edited.set_format_version(kJobStateFormatVersion);
  edited.set_job("edited");
  edited.mutable_config()->set_policy(v1::POLICY_STABILIZE);
  edited.mutable_config()->mutable_stabilize()->set_beta1(5);
  ASSERT_TRUE(store.Save(edited).ok());
  v1::JobState badly_named = edited;
  badly_named.clear_config();
  badly_named.set_job("bad name");
  ASSERT_TRUE(store.Save(badly_named).ok());
  v1::JobState good = edited;
  good.set_job("good");
  good.mutable_config()->mutable_stabilize()->set_beta1(0.9);
  ASSERT_TRUE(store.Save(good).ok());
  EXPECT_EQ(LoadedJobs(&store), std::vector<std::string>{"good"});
  int aside = 0, kept = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/state")) {
    aside += e.path().filename().string().find(".jobstate.corrupt-") != std::string::npos;
    kept += absl::StartsWith(e.path().filename().string(), "newer.jobstate.newer-");
  }
  EXPECT_EQ(aside, 3);
  // The newer release's is kept apart, and forgetting its job here does not delete it: the
  // newer release, run again, can take it back.
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(store.RemoveSetAside("newer"), 0u);
  // One put there while gstabd runs, read at its job's attach, is kept apart likewise.
  ASSERT_TRUE(store.Save(newer).ok());
  EXPECT_EQ(store.Load("newer").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store.RemoveSetAside("newer"), 0u);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/state/newer.jobstate"));
}

TEST(StateStoreTest, WritableFolderIsCreatedAndLeftAsFound) {
  testing::TempDir dir;
  const std::string state = dir.path() + "/a/b";
  StateStore store(state);
  ASSERT_TRUE(store.Init().ok());
  EXPECT_TRUE(std::filesystem::is_empty(state));
  v1::JobState job;
  job.set_format_version(kJobStateFormatVersion);
  job.set_job("j");
  ASSERT_TRUE(store.Save(job).ok());
  EXPECT_EQ(LoadedJobs(&store), std::vector<std::string>{"j"});
  // gstabd's user's alone: its group is often the training users'.
  struct stat st;
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((state + "/j.jobstate").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

// A folder made by someone else (a Kubernetes hostPath is made 0755) and files of older releases
// (checkpoints were 0640) are made gstabd's user's alone when it starts.
TEST(StateStoreTest, AFolderFoundOpenAndItsFilesAreMadeOwnersAlone) {
  testing::TempDir dir;
  const std::string state = dir.path() + "/state";
  ASSERT_EQ(::mkdir(state.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(state.c_str(), 0755), 0);  // whatever the umask
  {
    StateStore first(state);
    ASSERT_TRUE(first.Init().ok());
    v1::JobState job;
    job.set_format_version(kJobStateFormatVersion);
    job.set_job("old");
    ASSERT_TRUE(first.Save(job).ok());
  }
  ASSERT_EQ(::chmod(state.c_str(), 0755), 0);
  ASSERT_EQ(::chmod((state + "/old.jobstate").c_str(), 0640), 0);
  auto mode = [](const std::string& path) {
    struct stat st;
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  };
  {
    StateStore store(state);
    ASSERT_TRUE(store.Init().ok());
    EXPECT_EQ(mode(state), 0700u);
    EXPECT_EQ(mode(state + "/old.jobstate"), 0600u);
    EXPECT_EQ(LoadedJobs(&store), std::vector<std::string>{"old"});
  }
  // A folder shared with other files (--state_dir=/tmp, say) is left as it is, and so are the
  // files that are not gstabd's, and those a checkpoint's name links to.
  ASSERT_EQ(::chmod(state.c_str(), 01777), 0);
  ASSERT_EQ(::chmod((state + "/old.jobstate").c_str(), 0640), 0);
  const std::string other = dir.path() + "/elsewhere";
  std::ofstream(other) << "x";
  ASSERT_EQ(::chmod(other.c_str(), 0644), 0);
  ASSERT_EQ(::symlink(other.c_str(), (state + "/link.jobstate").c_str()), 0);
  const std::string other_too = dir.path() + "/elsewhere-too";  // linked hard: another name
  std::ofstream(other_too) << "x";
  ASSERT_EQ(::chmod(other_too.c_str(), 0644), 0);
  ASSERT_EQ(::link(other_too.c_str(), (state + "/hard.jobstate").c_str()), 0);
  std::ofstream(state + "/notes.txt") << "x";
  ASSERT_EQ(::chmod((state + "/notes.txt").c_str(), 0644), 0);
  StateStore shared(state);
  ASSERT_TRUE(shared.Init().ok());
  EXPECT_EQ(mode(state), 01777u);
  EXPECT_EQ(mode(state + "/old.jobstate"), 0600u);
  EXPECT_EQ(mode(state + "/notes.txt"), 0644u);
  EXPECT_EQ(mode(other), 0644u);
  EXPECT_EQ(mode(other_too), 0644u);
}

// One store (one gstabd) a folder at a time: another's Init is refused, and sweeps none of the
// first one's temporary files; the folder is free again once the first store goes.
TEST(StateStoreTest, AFolderIsOneStoresAtATime) {
  testing::TempDir dir;
  auto first = std::make_unique<StateStore>(dir.path());
  ASSERT_TRUE(first->Init().ok());
  const std::string in_flight = dir.path() + "/j.jobstate:tmp:1.1";
  { std::ofstream(in_flight) << "x"; }
  StateStore second(dir.path());
  absl::Status s = second.Init();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("give each gstabd its own --state_dir"), std::string::npos) << s;
  EXPECT_TRUE(std::filesystem::exists(in_flight));
  first.reset();
  EXPECT_TRUE(second.Init().ok());
  EXPECT_FALSE(std::filesystem::exists(in_flight));
}

// A job's checkpoint is read back whole (when a retired job is restored); one copied or renamed
// under another job's file name is not taken for that job, neither at start nor on restore.
TEST(StateStoreTest, ACheckpointIsReadBackWholeAndOnlyForItsJob) {
  testing::TempDir dir;
  StateStore store(dir.path());
  ASSERT_TRUE(store.Init().ok());
  const v1::JobState job = JobA(12);
  ASSERT_TRUE(store.Save(job).ok());
  absl::StatusOr<v1::JobState> loaded = store.Load("a");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->SerializeAsString(), job.SerializeAsString());
  EXPECT_EQ(store.Load("b").status().code(), absl::StatusCode::kNotFound);
  std::filesystem::copy_file(dir.path() + "/a.jobstate", dir.path() + "/b.jobstate");
  EXPECT_EQ(store.Load("b").status().code(), absl::StatusCode::kDataLoss);
  // A folder in its place is no checkpoint: set aside (its job's saves would fail for good, and
  // its attaches be refused), not taken for one at start either.
  std::filesystem::create_directory(dir.path() + "/c.jobstate");
  EXPECT_EQ(store.Load("c").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/c.jobstate"));
  EXPECT_EQ(LoadedJobs(&store), std::vector<std::string>{"a"});
}

// In a state directory others may write, or another user's, a checkpoint another user owns is
// not restored (anyone could have written it, claiming a job for its owner); in one of gstabd's
// user alone it is (root's, say, made by a gstabd of another user before).
TEST(StateStoreTest, AnotherUsersCheckpointInAFolderOthersMayWriteIsNotRestored) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  testing::TempDir dir;
  {
    StateStore store(dir.path());
    ASSERT_TRUE(store.Init().ok());
    ASSERT_TRUE(store.Save(JobA(12)).ok());
  }
  const std::string path = dir.path() + "/a.jobstate";
  ASSERT_EQ(chown(path.c_str(), 4321, 4321), 0);
  {
    StateStore alone(dir.path());
    ASSERT_TRUE(alone.Init().ok());
    EXPECT_EQ(LoadedJobs(&alone), std::vector<std::string>{"a"});
  }
  // Found open to others' writes (not made 0700 by Init, which another user's file there stops).
  ASSERT_EQ(chmod(dir.path().c_str(), 0777), 0);
  // Nor is another user's entry there that is no file set aside: it is theirs (unopened).
  const std::string fifo = dir.path() + "/b.jobstate";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0000), 0);
  ASSERT_EQ(chown(fifo.c_str(), 4321, 4321), 0);
  {
    StateStore shared(dir.path());
    ASSERT_TRUE(shared.Init().ok());
    EXPECT_TRUE(LoadedJobs(&shared).empty());
    EXPECT_EQ(shared.Load("a").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(shared.Load("b").status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(std::filesystem::exists(path));  // left where it is
    EXPECT_TRUE(std::filesystem::is_fifo(fifo));
    struct stat st;
    ASSERT_EQ(::stat(dir.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0777u);
  }
  // A folder of that user's, whatever its mode, is theirs to write: not restored either.
  ASSERT_EQ(chown(dir.path().c_str(), 4321, 4321), 0);
  ASSERT_EQ(chmod(dir.path().c_str(), 0700), 0);
  StateStore theirs(dir.path());
  ASSERT_TRUE(theirs.Init().ok());
  EXPECT_TRUE(LoadedJobs(&theirs).empty());
  EXPECT_EQ(theirs.Load("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(std::filesystem::exists(path));
}

// An idle job's checkpoint is not written again at every interval: a save of the same state to
// a file still as written is skipped (the file keeps its inode). A changed state is written, and
// so is the same state once its file was removed, replaced, or written over in place.
TEST(StateStoreTest, AnUnchangedStateIsNotWrittenAgain) {
  testing::TempDir dir;
  StateStore store(dir.path());
  ASSERT_TRUE(store.Init().ok());
  const std::string path = dir.path() + "/a.jobstate";
  auto inode = [&] {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  };
  ASSERT_TRUE(store.Save(JobA(12)).ok());
  const ino_t first = inode();
  ASSERT_TRUE(store.Save(JobA(12)).ok());
  EXPECT_EQ(inode(), first) << "an unchanged state was written again";
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  const ino_t changed = inode();
  EXPECT_NE(changed, first);
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  EXPECT_EQ(inode(), changed);

  std::filesystem::remove(path);  // by hand
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  EXPECT_NE(inode(), 0u);
  std::filesystem::copy_file(path, dir.path() + "/copy");
  std::filesystem::rename(dir.path() + "/copy", path);  // replaced by another file
  const ino_t replaced = inode();
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  EXPECT_NE(inode(), replaced);
  // Written over in place, to the same size (its time changes: a tick of the kernel's coarse
  // clock later).
  const ino_t before = inode();
  absl::SleepFor(absl::Milliseconds(20));
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x7f');
  }
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  EXPECT_NE(inode(), before);
  // Asked to, it sets the file's time all the same (a live or retiring job's: the retention after
  // a restart counts from it), and the file stays known as written.
  auto modified = [&] {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 ? absl::TimeFromTimespec(st.st_mtim) : absl::Time();
  };
  const ino_t kept = inode();
  const absl::Time written = modified();
  absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(store.Save(JobA(13), /*touch=*/true).ok());
  EXPECT_EQ(inode(), kept);
  EXPECT_GT(modified(), written);
  ASSERT_TRUE(store.Save(JobA(13)).ok());
  EXPECT_EQ(inode(), kept);
  absl::StatusOr<v1::JobState> loaded = store.Load("a");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->SerializeAsString(), JobA(13).SerializeAsString());
}

// At start, what is no checkpoint by its kind or size is set aside unread: a folder (whose
// job's every save would fail), a FIFO (whose read would wait for good), a file larger than
// any checkpoint (read whole, it would take its size in memory). The checkpoints found come
// without their groups, which stay on disk until their job comes back.
TEST(StateStoreTest, WhatIsNoCheckpointByItsKindOrSizeIsSetAsideUnread) {
  testing::TempDir dir;
  StateStore store(dir.path());
  ASSERT_TRUE(store.Init().ok());
  ASSERT_TRUE(store.Save(JobA(3)).ok());
  std::filesystem::create_directory(dir.path() + "/folder.jobstate");
  ASSERT_EQ(::mkfifo((dir.path() + "/fifo.jobstate").c_str(), 0600), 0);
  std::filesystem::resize_file(
      (std::ofstream(dir.path() + "/huge.jobstate") << "x", dir.path() + "/huge.jobstate"),
      size_t{512} << 20);  // sparse: no disk taken
  // A socket (whose open fails) and links, to a checkpoint or to nothing, are not followed:
  // before, a socket kept gstabd from starting, and a link to nothing was skipped silently.
  const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string socket_path = dir.path() + "/socket.jobstate";
  ASSERT_LT(socket_path.size(), sizeof(address.sun_path));
  std::strcpy(address.sun_path, socket_path.c_str());
  ASSERT_EQ(::bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ::close(sock);
  std::filesystem::create_symlink(dir.path() + "/a.jobstate", dir.path() + "/linked.jobstate");
  std::filesystem::create_symlink(dir.path() + "/gone", dir.path() + "/dangling.jobstate");
  absl::StatusOr<std::vector<StateStore::Stored>> all = store.LoadAll();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].state.job(), "a");
  EXPECT_EQ((*all)[0].state.groups_size(), 0);
  EXPECT_EQ((*all)[0].groups, 1u);
  for (const char* name : {"folder", "fifo", "huge", "socket", "linked", "dangling"}) {
    EXPECT_FALSE(std::filesystem::exists(
        std::filesystem::symlink_status(dir.path() + "/" + name + ".jobstate")))
        << name;
  }
  size_t aside = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    aside += e.path().filename().string().find(".jobstate.corrupt-") != std::string::npos;
  }
  EXPECT_EQ(aside, 6u);
  absl::StatusOr<v1::JobState> whole = store.Load("a");  // the groups, from disk
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->groups_size(), 1);
}

// The folder removed under a running gstabd and made again (by hand, or by a second gstabd that
// then locked it): saves go by name, so they must not write into a folder another gstabd holds.
// One nobody holds is locked and written; while none is there, saves fail saying so. Nor is a
// checkpoint in another gstabd's folder read or set aside.
TEST(StateStoreTest, AFolderMadeAgainIsWrittenOnlyOnceItIsLocked) {
  testing::TempDir dir;
  const std::string state = dir.path() + "/state";
  StateStore first(state);
  ASSERT_TRUE(first.Init().ok());
  ASSERT_TRUE(first.Save(JobA(3)).ok());
  std::filesystem::remove_all(state);
  absl::Status gone = first.Save(JobA(4));
  EXPECT_FALSE(gone.ok());
  EXPECT_NE(gone.message().find("is gone"), std::string::npos) << gone;
  // Nothing of this gstabd's is there to delete: done (a forget, a retention's deletion goes on).
  bool deleted = true;
  EXPECT_TRUE(first.Remove("a", &deleted).ok());
  EXPECT_FALSE(deleted);
  {
    StateStore second(state);  // another gstabd makes and locks it, and saves step 10
    ASSERT_TRUE(second.Init().ok());
    ASSERT_TRUE(second.Save(JobA(10)).ok());
    absl::Status held = first.Save(JobA(5));
    EXPECT_FALSE(held.ok());
    EXPECT_NE(held.message().find("locked by another process"), std::string::npos) << held;
    // Nor is the other gstabd's file of the same name deleted, or read, or set aside, as this
    // one's.
    EXPECT_TRUE(first.Remove("a").ok());
    EXPECT_TRUE(std::filesystem::exists(state + "/a.jobstate"));
    absl::StatusOr<v1::JobState> foreign = first.Load("a");
    EXPECT_TRUE(absl::IsNotFound(foreign.status())) << foreign.status();
    EXPECT_NE(foreign.status().message().find("locked by another process"), std::string::npos);
    first.SetAsideCheckpoint("a", "cannot be restored");
    absl::StatusOr<v1::JobState> kept = second.Load("a");
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_EQ(kept->last_step(), 10u);
  }
  // That gstabd gone, the folder is the first one's again: locked, and written.
  ASSERT_TRUE(first.Save(JobA(6)).ok());
  StateStore third(state);
  EXPECT_FALSE(third.Init().ok());
  absl::StatusOr<v1::JobState> now = first.Load("a");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->last_step(), 6u);
}

// A checkpoint cut short or changed (a disk that lost its tail, a hand edit) is set aside, not
// read as a smaller state: cut after its groups, it would lose its owner, and another uid could
// take the job. One an older gstabd wrote (no checksum) is still read.
TEST(StateStoreTest, ACheckpointCutShortOrChangedIsSetAsideAndAnOlderOnesIsRead) {
  testing::TempDir dir;
  StateStore store(dir.path());
  ASSERT_TRUE(store.Init().ok());
  v1::JobState job = JobA(3);
  job.set_owner_uid(65534);
  ASSERT_TRUE(store.Save(job).ok());
  const std::string path = dir.path() + "/a.jobstate";
  auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  };
  std::string whole;
  {
    std::ifstream in(path, std::ios::binary);
    whole.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (size_t cut = 0; cut < whole.size(); ++cut) {
    write(whole.substr(0, cut));
    const absl::Status s = store.Load("a").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "cut at " << cut << ": " << s;
  }
  std::string unkeyed = whole;
  unkeyed[0] ^= 8;  // the checksum's key made another field's: not read as an older state
  write(unkeyed);
  EXPECT_EQ(store.Load("a").status().code(), absl::StatusCode::kDataLoss);
  std::string changed = whole;
  changed[changed.size() / 2] ^= 1;
  write(changed);
  const absl::Status s = store.Load("a").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("checksum does not match"), std::string::npos) << s;
  write(changed);
  EXPECT_EQ(LoadedJobs(&store), std::vector<std::string>{});

  write(job.SerializeAsString());  // an older gstabd's
  absl::StatusOr<v1::JobState> older = store.Load("a");
  ASSERT_TRUE(older.ok()) << older.status();
  EXPECT_EQ(older->owner_uid(), 65534u);
  write(whole);
  absl::StatusOr<v1::JobState> loaded = store.Load("a");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->SerializeAsString(), job.SerializeAsString());
}

TEST(StateStoreTest, ProbesACrashLeftBehindAreSweptAndCheckpointsKept) {
  testing::TempDir dir;
  const std::string state = dir.path() + "/state";
  std::filesystem::create_directories(state + "/.write-probe:1");  // even a folder by that name
  { std::ofstream(state + "/.write-probe:abcdef") << "x"; }
  v1::JobState job;
  job.set_format_version(kJobStateFormatVersion);
  job.set_job("kept");
  ASSERT_TRUE(StateStore(state).Save(job).ok());
  StateStore store(state);
  ASSERT_TRUE(store.Init().ok());
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(state)) {
    left.push_back(e.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{"kept.jobstate"});
}

TEST(StateStoreTest, FolderThatCannotBeWrittenIsRefusedWithTheReason) {
  // A folder no one may create files in, root included (permission bits would not stop root).
  StateStore store("/proc/self");
  absl::Status s = store.Init();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("'/proc/self' is not writable"), std::string::npos) << s;
  EXPECT_NE(s.message().find("--state_dir"), std::string::npos) << s;
}

TEST(StateStoreTest, PathThroughAFileIsRefused) {
  testing::TempDir dir;
  const std::string file = dir.path() + "/file";
  std::filesystem::create_directories(dir.path());
  { std::ofstream(file) << "x"; }
  absl::Status s = StateStore(file + "/state").Init();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("cannot create state directory"), std::string::npos) << s;
}

}  // namespace
}  // namespace gstab
