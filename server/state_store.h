// Job statistics on disk: one file per job in the daemon's state directory, written atomically
// (temporary file, fsync, rename) so a crash never leaves a torn checkpoint.
//
// Thread-safe (each call works on its own files).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab {

class StateStore {
 public:
  // An empty `dir` disables persistence: Save does nothing, LoadAll finds nothing.
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}

  // Creates the directory if needed. FAILED_PRECONDITION when it cannot be created or written.
  absl::Status Init();
  // Whether checkpoints are kept on disk at all (a state directory was given).
  bool enabled() const { return !dir_.empty(); }
  absl::Status Save(const v1::JobState& state);
  // Deletes job's checkpoint (none there is not an error).
  absl::Status Remove(const std::string& job);
  struct Stored {
    v1::JobState state;
    absl::Time saved;  // when the file was last written
  };
  // Every readable checkpoint; unreadable files are skipped with a logged warning.
  std::vector<Stored> LoadAll();
  // `job`'s checkpoint. NOT_FOUND without one; DATA_LOSS when it is not `job`'s checkpoint;
  // UNAVAILABLE when it cannot be opened or read now (out of descriptors, an I/O error).
  absl::StatusOr<v1::JobState> Load(const std::string& job);

 private:
  std::string dir_;
};

}  // namespace gstab
