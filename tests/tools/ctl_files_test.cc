// The files `gstabctl export` replaces: written beside the target and renamed over it, keeping
// its mode, and its owner and group where the user may keep them. Run as root: the users and
// groups are made up, and taken on by a child process.
#include "tools/ctl_files.h"

#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace gstab::ctl {
namespace {

constexpr uid_t kOwner = 64001;   // the file's owner
constexpr uid_t kOther = 64002;   // a user of its group, who exports over it
constexpr gid_t kShared = 64101;  // the file's group, and the folder's
constexpr gid_t kOwn = 64102;     // the other user's own group

// Runs `body` in a child as `uid` (primary group `gid`, among `groups`), in `folder`; its exit
// code (0: it returned true).
int RunAs(uid_t uid, gid_t gid, gid_t group, const std::string& folder,
          const std::function<bool()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    const gid_t groups[] = {group};
    if (setgroups(1, groups) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0 || chdir(folder.c_str()) != 0) {
      _exit(3);
    }
    _exit(body() ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Contents(const std::string& path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  return all.str();
}

bool Export(const std::string& path, const std::string& bytes) {
  absl::StatusOr<Output> out = ResolveOutput(path);
  const absl::Status written = out.ok() ? WriteWhole(*out, bytes) : out.status();
  if (!written.ok()) std::fprintf(stderr, "%s\n", written.ToString().c_str());
  return written.ok();
}

TEST(CtlFilesTest, AReplacedFileKeepsItsGroupForAUserAmongItAndBothAsRoot) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to act as made-up users";
  testing::TempDir dir;
  const std::string folder = dir.path() + "/shared";
  ASSERT_EQ(mkdir(folder.c_str(), 0700), 0);
  ASSERT_EQ(chown(folder.c_str(), 0, kShared), 0);
  ASSERT_EQ(chmod(folder.c_str(), 0770), 0);
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  const std::string file = folder + "/stats.state";
  std::ofstream(file) << "old";
  ASSERT_EQ(chown(file.c_str(), kOwner, kShared), 0);
  ASSERT_EQ(chmod(file.c_str(), 0660), 0);

  // Another user of the group, by a name relative to the folder: the file becomes theirs, its
  // group and mode stay, so its owner can still read it.
  EXPECT_EQ(RunAs(kOther, kOwn, kShared, folder, [] { return Export("stats.state", "new"); }), 0);
  struct stat st;
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kOther);
  EXPECT_EQ(st.st_gid, kShared);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(Contents(file), "new");
  // Nothing left beside it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(folder), {}), 1);

  // Root keeps both.
  ASSERT_EQ(chown(file.c_str(), kOwner, kShared), 0);
  ASSERT_TRUE(Export(file, "root's"));
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kOwner);
  EXPECT_EQ(st.st_gid, kShared);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(Contents(file), "root's");
}

}  // namespace
}  // namespace gstab::ctl
