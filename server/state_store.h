// Job statistics on disk: one file per job in the daemon's state directory, written atomically
// and durably (temporary file, fsync, rename, fsync of the folder) so a crash never leaves a torn
// checkpoint, nor one that a power loss turns back into the one before (or, deleted, back into
// existence).
//
// One gstabd uses a state directory at a time: Init locks it (flock on the folder) until the
// store goes (and, should the folder be removed and made again, the new one: CheckFolder).
// Thread-safe (each call works on its own files).
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab {

class StateStore {
 public:
  // An empty `dir` disables persistence: Save does nothing, LoadAll finds nothing.
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // Creates the directory if needed and locks it. FAILED_PRECONDITION when it cannot be created
  // or written, or another process (another gstabd) holds it.
  absl::Status Init();
  // Whether checkpoints are kept on disk at all (a state directory was given).
  bool enabled() const { return !dir_.empty(); }
  // Writes `state` as its job's checkpoint, replacing the previous one only once the new one
  // is whole on disk: INTERNAL when a write, fsync, close, rename, or the folder's fsync after
  // the rename fails (the checkpoint may then not survive a crash), saying which. A state whose
  // bytes are those this store last wrote for the job, to a file still there as written, is
  // not written again (an idle job's checkpoint, every interval). `touch`: such a file's time is
  // set to now all the same (a live job's, and one retiring): after a restart the retention
  // counts from it (LoadAll's Stored::saved).
  absl::Status Save(const v1::JobState& state, bool touch = false);
  // Deletes job's checkpoint (none there is not an error); `deleted` (may be null) says whether
  // there was one.
  absl::Status Remove(const std::string& job, bool* deleted = nullptr);
  struct Stored {
    v1::JobState state;  // without its groups (Load gives them)
    absl::Time saved;    // the file's modification time (see Save's `touch`)
    uint32_t groups = 0;
  };
  // Every checkpoint. A <job>.jobstate that is not one (not a regular file, larger than any
  // checkpoint, garbled, or a job's under another job's name) is set aside as
  // <file>.corrupt-<unix seconds> with a logged error, so that the job, which starts afresh,
  // does not overwrite it (or fail to, at every save); so is one not valid (ValidateJobState).
  // One of a newer format version (a newer release's, met after a rollback) is set aside as
  // <file>.newer-<unix seconds>, which RemoveSetAside keeps: the newer release can take it
  // back. FAILED_PRECONDITION when a checkpoint file
  // cannot be read (no permission, an I/O error): starting without it would let its job start
  // afresh over it and lose its statistics and owner.
  absl::StatusOr<std::vector<Stored>> LoadAll();
  // `job`'s checkpoint. NOT_FOUND without one, and when the folder is no longer the one locked
  // (CheckFolder: removed, or replaced by another gstabd's); DATA_LOSS when it is not `job`'s
  // checkpoint (set aside as LoadAll does); UNAVAILABLE when it cannot be opened or read now
  // (out of descriptors, an I/O error).
  absl::StatusOr<v1::JobState> Load(const std::string& job);
  // Sets `job`'s checkpoint aside (as LoadAll does) when its job could not take it (`why`) and
  // starts afresh: its next checkpoint would overwrite it.
  void SetAsideCheckpoint(const std::string& job, const std::string& why);
  // Deletes the files of `job` set aside (<job>.jobstate.corrupt-*), for a job forgotten: how
  // many (those that cannot be deleted are logged and kept).
  uint32_t RemoveSetAside(const std::string& job);

 private:
  static constexpr char kSuffix[] = ".jobstate";
  // After a checkpoint's name (<job>.jobstate), that of a file set aside (SetAside).
  static constexpr char kSetAsideInfix[] = ".corrupt-";
  // After a checkpoint's name, that of a newer release's checkpoint set aside (kept by forget).
  static constexpr char kNewerInfix[] = ".newer-";

  // Makes the folder's entries (a rename, a deletion) durable. OK where the file system has
  // no such thing (EINVAL).
  absl::Status SyncDir() const;
  // OK while the folder at dir_ is the one locked. One made again under the name since is
  // locked in its place, unless another process holds it (FAILED_PRECONDITION, as when the
  // folder is gone; UNAVAILABLE for a failure that may pass: no permission to look, out of
  // descriptors): saves, deletions and reads must not reach another gstabd's folder (saves and
  // deletions then go through the folder locked, OpenCheckedFolder; reads by name).
  absl::Status CheckFolder();
  // CheckFolder, then a descriptor of the folder locked (the caller's to close), for saves and
  // deletions by name within it.
  absl::StatusOr<int> OpenCheckedFolder();
  // Renames the file at `path`, which `why` is not a checkpoint, out of the way (logged), as
  // <path><infix><unix seconds>.
  void SetAside(const std::string& path, const std::string& why, const char* infix = nullptr);

  // What Save last wrote for a job: the file (its identity, size and time) and its bytes' checksum
  // (EncodeJobState's leading bytes).
  struct Written {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = 0;
    struct timespec modified = {};  // a write in place changes it
    std::string checksum;
  };
  // Whether a checkpoint file owned by `owner` is not to be trusted: another user's, in a folder
  // others may write or of another user (not root's); one gstabd's user (or root) alone writes
  // holds only what that user or root put there. Logs why.
  bool Foreign(const std::string& path, uid_t owner) const;
  // Sets the time of `job`'s file `name` in the folder `dir_fd` (`path` in messages), as Save
  // wrote it, to now.
  void Touch(const std::string& job, int dir_fd, const std::string& name, const std::string& path);
  // Whether `bytes` are what the file `name` in the folder `dir_fd` holds as Save last wrote it
  // for `job`.
  bool Unchanged(const std::string& job, int dir_fd, const std::string& name,
                 const std::string& bytes);

  std::string dir_;
  absl::Mutex written_mu_;
  std::map<std::string, Written> written_ ABSL_GUARDED_BY(written_mu_);
  mutable absl::Mutex folder_mu_;
  int lock_fd_ ABSL_GUARDED_BY(folder_mu_) = -1;  // the folder, flock()ed, from Init
};

}  // namespace gstab
