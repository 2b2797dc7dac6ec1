// Host shared-memory objects mapped into gstabd, and the refcounted registry that shares one
// mapping per object between sessions. A mapping stays valid for as long as anyone holds its
// shared_ptr: registrations hold them, and a running step holds a copy, so an object is never
// unmapped while a step uses it.
//
// Thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace gstab {

// A mapped object's name and identity, to act on the name only while it still names the object.
struct ShmObject {
  std::string name;
  dev_t device = 0;
  ino_t inode = 0;
};

// What RemoveIfStill did.
enum class ShmRemoval { kRemoved, kAlreadyGone, kReplaced, kFailed };
// Removes `object`'s name from /dev/shm if it still names that object. kReplaced when another
// object (or anything else) is under the name now: a worker made a new one since, which is
// left alone. `error` (may be null) takes strerror's text when kFailed. (A replacement between
// the look and the removal cannot be told: shm_unlink goes by name alone.)
ShmRemoval RemoveIfStill(const ShmObject& object, std::string* error = nullptr);

class ShmMapping {
 public:
  // Opens and maps the whole object read-write. NOT_FOUND when it does not exist,
  // PERMISSION_DENIED when it cannot be opened read-write, RESOURCE_EXHAUSTED when it is larger
  // than `max_bytes` (a huge sparse object would take gstabd's address space), or, before
  // anything is mapped, when `owner` is given and does not own it. `open_count` (may be null)
  // counts the mapping while it lives.
  static absl::StatusOr<std::shared_ptr<ShmMapping>> Open(
      const std::string& name, uint64_t max_bytes,
      std::shared_ptr<std::atomic<int>> open_count = nullptr,
      std::optional<uid_t> owner = std::nullopt);
  ~ShmMapping();
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;

  const std::string& name() const { return name_; }
  unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  uid_t owner() const { return owner_; }  // the object's owner when it was opened
  // FAILED_PRECONDITION when the object is now smaller than the mapping (its creator truncated
  // it, and touching the pages past its end would raise SIGBUS), some of its pages were
  // released (touching them would allocate them on gstabd's account), or a touch of it already
  // raised SIGBUS (Lost). Checked before every step, and again before its scaling; the caller
  // says what of the step was applied.
  absl::Status CheckSize() const;
  // Whether a touch of this mapping raised SIGBUS (server/shm_faults.h): its pages from there on
  // were replaced by zeros, and the object is not used again. A step checks it after touching.
  bool Lost() const;
  // Where Lost is counted, for the kernels (Chunk::lost): valid as long as this mapping.
  const std::atomic<uint32_t>* lost_count() const;
  // FAILED_PRECONDITION naming the object when Lost.
  absl::Status CheckNotLost() const;
  // Whether `name` still names this object, at the size mapped, and it is not Lost: a worker may
  // have replaced it (removed it and made another of that name) or resized it since.
  bool IsCurrent() const;
  dev_t device() const { return dev_; }  // the object's identity
  ino_t inode() const { return ino_; }
  ShmObject object() const { return ShmObject{name_, dev_, ino_}; }
  // Marks this mapping as replaced by a newer one of its object (MappingRegistry::Acquire):
  // CheckSize fails from then on, for good, so that it cannot become usable beside that one
  // (an object shrunk, mapped anew, then grown back). `why`: what had made this mapping
  // unusable (CheckSize's failure then). Called under the registry's lock alone, once.
  void Supersede(std::string why) {
    if (superseded_.load()) return;
    superseded_why_ = std::move(why);
    superseded_.store(true);  // after the reason, which CheckSize reads once it sees this
  }
  // Where POSIX shared memory objects live on Linux (glibc's shm_open).
  static constexpr char kShmDirectory[] = "/dev/shm";
  // Counts this mapping in `count` too, for as long as it lives (once, before it is shared).
  void AlsoCountIn(std::shared_ptr<std::atomic<int>> count);

 private:
  ShmMapping(std::string name, int fd, unsigned char* data, size_t size, int fault_slot,
             uid_t owner, dev_t dev, ino_t ino, std::shared_ptr<std::atomic<int>> open_count)
      : name_(std::move(name)),
        fd_(fd),
        data_(data),
        size_(size),
        fault_slot_(fault_slot),
        owner_(owner),
        dev_(dev),
        ino_(ino),
        open_count_(std::move(open_count)) {
    if (open_count_ != nullptr) ++*open_count_;
  }

  std::string name_;
  int fd_;  // kept open for CheckSize
  unsigned char* data_;
  size_t size_;
  int fault_slot_;  // ShmFaults'
  uid_t owner_;
  dev_t dev_;  // the object's identity
  ino_t ino_;
  std::shared_ptr<std::atomic<int>> open_count_;  // may be null
  std::shared_ptr<std::atomic<int>> owner_count_;  // may be null
  std::atomic<bool> superseded_{false};
  std::string superseded_why_;  // written once, before superseded_
};

class MappingRegistry {
 public:
  // At most `max_mappings` objects mapped at once, over every job: each is a mapping in gstabd's
  // address space, and the kernel caps those per process (vm.max_map_count). Of those, at most
  // `max_per_owner` of one uid's objects, so that one user cannot take them all.
  explicit MappingRegistry(int max_mappings = kDefaultMaxMappings,
                           int max_per_owner = kDefaultMaxMappingsPerOwner)
      : max_mappings_(max_mappings), max_per_owner_(max_per_owner) {}
  static constexpr int kDefaultMaxMappings = 16384;
  static constexpr int kDefaultMaxMappingsPerOwner = 8192;
  // Mappings of one object at once, earlier sizes' still held included (Acquire).
  static constexpr size_t kMaxMappingsPerObject = 8;

  // Returns the live mapping of `name` if it is still that object at that size (ShmMapping::
  // IsCurrent), else opens it (anew: holders of an older mapping keep theirs).
  // FAILED_PRECONDITION when a mapping still usable maps the same object under another name or
  // size (a hard link, an object grown since). RESOURCE_EXHAUSTED
  // when that would map more than `max_mappings` objects, or more than `max_per_owner` of the
  // object's owner's, or the object kMaxMappingsPerObject times (at earlier sizes, still
  // held); PERMISSION_DENIED when `owner` is
  // given and does not own the object (checked before it is mapped).
  absl::StatusOr<std::shared_ptr<ShmMapping>> Acquire(const std::string& name,
                                                      uint64_t max_bytes = UINT64_MAX,
                                                      std::optional<uid_t> owner = std::nullopt);
  // RemoveIfStill(object), unless `object` (its device and inode, whatever its name and size) is
  // mapped (a registration, one under way or a round holds it): then nothing. Under the lock
  // Acquire opens objects under, so that no registration maps it as its name goes.
  std::optional<ShmRemoval> RemoveUnlessMapped(const ShmObject& object, std::string* error)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Objects currently mapped (held by at least one registration or step), an object replaced
  // under its name while its old mapping is still held counted twice.
  int LiveMappings() const { return *open_; }

 private:
  const int max_mappings_;
  const int max_per_owner_;
  const std::shared_ptr<std::atomic<int>> open_ = std::make_shared<std::atomic<int>>(0);
  absl::Mutex mu_;
  std::map<std::string, std::weak_ptr<ShmMapping>> mappings_ ABSL_GUARDED_BY(mu_);
  // Live mappings by the uid that owns the object.
  std::map<uid_t, std::shared_ptr<std::atomic<int>>> by_owner_ ABSL_GUARDED_BY(mu_);
  // Every mapping by its object (device, inode) and a serial number, those replaced under
  // their name too.
  std::map<std::tuple<dev_t, ino_t, uint64_t>, std::weak_ptr<ShmMapping>> by_object_
      ABSL_GUARDED_BY(mu_);
  uint64_t serial_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gstab
