// The checkpoint store on a file system that fails to sync or close: this binary's fsync and
// close fail on demand (EIO, or EINVAL where a file system cannot sync a folder), for a
// folder or a checkpoint's temporary file, and pass everything else to the C library's.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/state_codec.h"
#include "server/state_store.h"
#include "tests/server/job_a_state.h"
#include "tests/testing/subprocess.h"

namespace {

std::atomic<int> folder_fsync_error{0};         // errno for a folder's fsync; 0: none
std::vector<std::string> folders_failed;        // the folders whose fsync failed on demand
std::atomic<bool> fail_temporary_close{false};  // EIO for closing a checkpoint's temporary file

bool IsFolder(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
}

// The path `fd` was opened at.
std::string PathOf(int fd) {
  char path[PATH_MAX];
  const ssize_t n =
      readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "";
}

bool IsTemporaryCheckpoint(int fd) {
  return PathOf(fd).find(".jobstate:tmp:") != std::string::npos;
}

}  // namespace

extern "C" int fsync(int fd) {
  static const auto real = reinterpret_cast<int (*)(int)>(dlsym(RTLD_NEXT, "fsync"));
  if (const int error = folder_fsync_error.load(); error != 0 && IsFolder(fd)) {
    folders_failed.push_back(PathOf(fd));
    errno = error;
    return -1;
  }
  return real(fd);
}

extern "C" int close(int fd) {
  static const auto real = reinterpret_cast<int (*)(int)>(dlsym(RTLD_NEXT, "close"));
  if (fail_temporary_close.load() && IsTemporaryCheckpoint(fd)) {
    real(fd);  // closed, as Linux does, with the error of a write that did not reach the disk
    errno = EIO;
    return -1;
  }
  return real(fd);
}

namespace gstab {
namespace {

using testing::JobA;

uint64_t StepOnDisk(StateStore* store) {
  absl::StatusOr<v1::JobState> job = store->Load("a");
  EXPECT_TRUE(job.ok()) << job.status();
  return job.ok() ? job->last_step() : 0;
}

class StateStoreSyncTest : public ::testing::Test {
 protected:
  void TearDown() override {
    folder_fsync_error = 0;
    fail_temporary_close = false;
  }
  // A store in <dir>/state holding job a's checkpoint at step 1.
  std::unique_ptr<StateStore> StoreAtStepOne() {
    auto store = std::make_unique<StateStore>(dir_.path() + "/state");
    EXPECT_TRUE(store->Init().ok());
    EXPECT_TRUE(store->Save(JobA(1)).ok());
    return store;
  }
  testing::TempDir dir_;
};

// A rename the folder's fsync did not make durable could be undone by a crash: the save says
// so (and is counted failed) rather than report a checkpoint that may not be there.
TEST_F(StateStoreSyncTest, ASaveWhoseFolderCannotBeSyncedFails) {
  std::unique_ptr<StateStore> store = StoreAtStepOne();
  folder_fsync_error = EIO;
  const absl::Status s = store->Save(JobA(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("a.jobstate' is written but cannot sync state directory"),
            absl::string_view::npos)
      << s;
  EXPECT_NE(s.message().find("Input/output error"), absl::string_view::npos) << s;
  folder_fsync_error = 0;
  EXPECT_EQ(StepOnDisk(store.get()), 2u);  // in place: only its durability is in doubt
  ASSERT_TRUE(store->Save(JobA(3)).ok());
  EXPECT_EQ(StepOnDisk(store.get()), 3u);
}

// Some file systems cannot sync a folder at all (EINVAL): nothing to fail there.
TEST_F(StateStoreSyncTest, AFileSystemThatCannotSyncFoldersSavesAndStarts) {
  folder_fsync_error = EINVAL;
  StateStore store(dir_.path() + "/new/state");  // made, and its parent synced
  ASSERT_TRUE(store.Init().ok());
  folders_failed.clear();
  EXPECT_TRUE(store.Save(JobA(4)).ok());
  EXPECT_FALSE(folders_failed.empty()) << "the save synced no folder";
  folders_failed.clear();
  bool deleted = false;
  EXPECT_TRUE(store.Remove("a", &deleted).ok());
  EXPECT_TRUE(deleted);
  EXPECT_FALSE(folders_failed.empty()) << "the deletion synced no folder";
}

// A deletion is done once the file is gone (its caller forgets the job with it), even when the
// folder cannot be synced after it: that is logged.
TEST_F(StateStoreSyncTest, ADeletionIsDoneWhenItsFolderCannotBeSynced) {
  std::unique_ptr<StateStore> store = StoreAtStepOne();
  folder_fsync_error = EIO;
  folders_failed.clear();
  bool deleted = false;
  EXPECT_TRUE(store->Remove("a", &deleted).ok());
  EXPECT_TRUE(deleted);
  EXPECT_FALSE(folders_failed.empty()) << "the deletion synced no folder";
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/state/a.jobstate"));
}

// Every folder gstabd makes above the state directory is synced into its parent.
TEST_F(StateStoreSyncTest, EveryFolderMadeIsSyncedIntoItsParent) {
  folder_fsync_error = EIO;  // each failure is logged, and the start goes on
  folders_failed.clear();
  StateStore store(dir_.path() + "/a/b/state");
  EXPECT_TRUE(store.Init().ok());
  const std::string root = std::filesystem::canonical(dir_.path()).string();
  EXPECT_EQ(folders_failed,  // the parents of a/b/state, a/b and a
            (std::vector<std::string>{root + "/a/b", root + "/a", root}));
}

// close() reports a write a network file system could not complete: the new checkpoint is not
// put in place, and the previous one stays.
TEST_F(StateStoreSyncTest, ACheckpointWhoseCloseFailsIsNotPutInPlace) {
  std::unique_ptr<StateStore> store = StoreAtStepOne();
  fail_temporary_close = true;
  const absl::Status s = store->Save(JobA(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("(close: Input/output error); the previous one, if any, is kept"),
            absl::string_view::npos)
      << s;
  fail_temporary_close = false;
  EXPECT_EQ(StepOnDisk(store.get()), 1u);
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path() + "/state")) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1u);  // no temporary file left
}

}  // namespace
}  // namespace gstab
