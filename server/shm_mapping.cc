#include "server/shm_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/weak_map.h"
#include "server/shm_faults.h"

namespace gstab {

namespace {

// Every page of the object must be there (st_blocks counts 512-byte units): a page gstabd
// touched that its worker never wrote would be allocated on gstabd's account, so that a sparse
// object (ftruncate alone) could run gstabd out of memory, or kill it with SIGBUS where
// /dev/shm has no room for the page. gstab's arenas reserve theirs with posix_fallocate.
//
// The count includes blocks reserved past the object's end (fallocate with KEEP_SIZE), which
// could balance holes of any size inside it; tmpfs offers no other way to find holes (SEEK_HOLE
// reports fallocated, unwritten pages as holes too), so such blocks are allowed only within
// the object's last huge page (tmpfs may allocate those: 2 MiB on x86-64, up to 512 MiB on
// arm64 with 64 KiB pages): the holes they can hide, and thus what a worker can have
// allocated on gstabd's account, stay under one huge page an object.
uint64_t HugePageBytes() {
  static const uint64_t bytes = [] {
    uint64_t read = 0;
    if (FILE* f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r")) {
      if (fscanf(f, "%" SCNu64, &read) != 1) read = 0;
      fclose(f);
    }
    // A power of two of at least a page, or x86-64's 2 MiB.
    return read >= 4096 && (read & (read - 1)) == 0 ? read : uint64_t{2} << 20;
  }();
  return bytes;
}

absl::Status CheckAllocated(const std::string& name, const struct stat& st) {
  const auto allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  const auto size = static_cast<uint64_t>(st.st_size);
  const uint64_t huge = HugePageBytes();
  const uint64_t whole_pages = size > UINT64_MAX - huge ? size : (size + huge - 1) / huge * huge;
  if (allocated > whole_pages) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared memory '", name, "' has ", allocated - size, " bytes allocated past its end of ",
        size,
        " (fallocate with FALLOC_FL_KEEP_SIZE): they would hide holes in it, whose pages "
        "gstabd's touch would allocate on its own account; allocate exactly the object (as "
        "gstab's arenas do with posix_fallocate)"));
  }
  if (allocated >= size) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "shared memory '", name, "' has ", allocated, " of its ", st.st_size,
      " bytes allocated: gstabd maps only objects whose every page is there (reserve them "
      "with posix_fallocate, as gstab's arenas do, or write every byte before registering)"));
}

absl::Status NotTheOwners(const std::string& name, uid_t owner, uid_t caller) {
  return absl::PermissionDeniedError(absl::StrCat("shared memory '", name, "' belongs to uid ",
                                                  owner, ", not to this worker's uid ", caller,
                                                  ": a worker registers only its own objects"));
}

absl::Status NotARegularObject(const std::string& name) {
  return absl::InvalidArgumentError(
      absl::StrCat("'", name,
                   "' in /dev/shm is not a shared memory object but a FIFO, socket, device or "
                   "folder: register the object the gradients are in"));
}

}  // namespace

absl::StatusOr<std::shared_ptr<ShmMapping>> ShmMapping::Open(
    const std::string& name, uint64_t max_bytes, std::shared_ptr<std::atomic<int>> open_count,
    std::optional<uid_t> owner) {
  // Its entry first, not opened: an open is seen by others (it wakes a process waiting in
  // open() on another user's FIFO, breaks a lease). Checked again on the descriptor below, as
  // the entry can change in between.
  if (struct stat entry;
      fstatat(AT_FDCWD, (kShmDirectory + name).c_str(), &entry, AT_SYMLINK_NOFOLLOW) == 0 &&
      !S_ISLNK(entry.st_mode)) {
    if (!S_ISREG(entry.st_mode)) return NotARegularObject(name);
    if (owner.has_value() && entry.st_uid != *owner)
      return NotTheOwners(name, entry.st_uid, *owner);
  }
  // O_NONBLOCK: a FIFO put under the name must not hold gstabd's caller (and the registry's
  // lock) until someone writes to it; it is refused below as not a regular object.
  const int fd = shm_open(name.c_str(), O_RDWR | O_NONBLOCK | O_NOCTTY, 0);
  if (fd < 0) {
    const int err = errno;
    const std::string what =
        absl::StrCat("cannot open shared memory '", name, "': ", strerror(err));
    if (err == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat(what,
                       " (its creator removed it, or gstabd did when the worker's lease expired: "
                       "allocate the gradients anew)"));
    }
    if (err == EACCES) {
      struct stat named;  // whose it is, by the name's entry (not opened)
      const std::string whose =
          fstatat(AT_FDCWD, (kShmDirectory + name).c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0
              ? absl::StrCat("it is uid ", named.st_uid, "'s, mode ",
                             absl::StrFormat("%04o", named.st_mode & 07777),
                             ", and gstabd runs as uid ", geteuid(), ": ")
              : "";
      return absl::PermissionDeniedError(
          absl::StrCat(what, " (", whose,
                       "a worker creates its shared memory mode 0600: gstabd must run as root with "
                       "CAP_DAC_OVERRIDE, as the Helm chart has it, or as the workers' own user)"));
    }
    if (err == ELOOP) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " (it is a symbolic link: register the object itself)"));
    }
    if (err == ENXIO || err == ENODEV || err == EISDIR) {  // a socket, a device, a folder
      return NotARegularObject(name);
    }
    if (err == EMFILE || err == ENFILE) {
      return absl::ResourceExhaustedError(absl::StrCat(
          what, " (gstabd keeps a descriptor per mapped object: raise its open-file limit, or "
                "lower --max_mappings to below it)"));
    }
    // The worker's doing, not gstabd's: a file lease it holds (fcntl F_SETLEASE: the open
    // would wait for its break), or a seal or attribute that refuses writers.
    if (err == EWOULDBLOCK || err == EAGAIN) {
      return absl::FailedPreconditionError(absl::StrCat(
          what,
          " (a process holds a lease on it, fcntl F_SETLEASE: let it go before registering)"));
    }
    if (err == EPERM) return absl::PermissionDeniedError(what);
    return absl::InternalError(what);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(
        absl::StrCat("cannot stat shared memory '", name, "': ", strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return NotARegularObject(name);
  }
  if (st.st_size <= 0) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("shared memory '", name, "' is empty"));
  }
  if (owner.has_value() && st.st_uid != *owner) {
    close(fd);
    return NotTheOwners(name, st.st_uid, *owner);
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("shared memory '", name, "' is ", st.st_size,
                     " bytes: gstabd maps whole objects, of up to ", max_bytes,
                     " bytes (its --max_bytes cap on registered bytes, plus padding)"));
  }
  if (absl::Status s = CheckAllocated(name, st); !s.ok()) {
    close(fd);
    return s;
  }
  ShmFaults::Install();
  const auto size = static_cast<size_t>(st.st_size);
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) {
    const int err = errno;
    close(fd);
    const std::string what = absl::StrCat("cannot map shared memory '", name, "': ", strerror(err));
    if (err == ENOMEM) {
      return absl::ResourceExhaustedError(
          absl::StrCat(what, " (gstabd's address space or map count is used up)"));
    }
    return absl::InternalError(what);
  }
  const std::optional<int> slot = ShmFaults::Watch(static_cast<unsigned char*>(data), size);
  if (!slot.has_value()) {
    munmap(data, size);
    close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map shared memory '", name, "': gstabd maps at most ",
                     ShmFaults::kSlots, " objects at once (lower --max_mappings to that)"));
  }
  return std::shared_ptr<ShmMapping>(new ShmMapping(name, fd, static_cast<unsigned char*>(data),
                                                    size, *slot, st.st_uid, st.st_dev, st.st_ino,
                                                    std::move(open_count)));
}

bool ShmMapping::Lost() const { return ShmFaults::Faults(fault_slot_) > 0; }

const std::atomic<uint32_t>* ShmMapping::lost_count() const {
  return ShmFaults::FaultCount(fault_slot_);
}

absl::Status ShmMapping::CheckNotLost() const {
  if (!Lost()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "gstabd could not touch every page of shared memory '", name_,
      "' (SIGBUS): its worker truncated it during a step, or left pages unallocated (holes) "
      "that tmpfs had no room for (/dev/shm full?). gstabd no longer uses its mapping: "
      "register the gradients again"));
}

ShmRemoval RemoveIfStill(const ShmObject& object, std::string* error) {
  struct stat st;
  if (fstatat(AT_FDCWD, (ShmMapping::kShmDirectory + object.name).c_str(), &st,
              AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return ShmRemoval::kAlreadyGone;
    if (error != nullptr) *error = strerror(errno);
    return ShmRemoval::kFailed;
  }
  if (st.st_dev != object.device || st.st_ino != object.inode) {
    return ShmRemoval::kReplaced;
  }
  if (shm_unlink(object.name.c_str()) == 0) return ShmRemoval::kRemoved;
  if (errno == ENOENT) return ShmRemoval::kAlreadyGone;
  if (error != nullptr) *error = strerror(errno);
  return ShmRemoval::kFailed;
}

bool ShmMapping::IsCurrent() const {
  if (Lost() || superseded_) return false;
  // By the name's entry, without opening it: whatever was put there (a FIFO, whose open would
  // wait for a writer) is only looked at.
  struct stat st;
  return fstatat(AT_FDCWD, (kShmDirectory + name_).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
         S_ISREG(st.st_mode) && st.st_dev == dev_ && st.st_ino == ino_ &&
         static_cast<uint64_t>(st.st_size) == size_;
}

ShmMapping::~ShmMapping() {
  ShmFaults::Unwatch(fault_slot_);
  munmap(data_, size_);
  close(fd_);
  if (open_count_ != nullptr) --*open_count_;
  if (owner_count_ != nullptr) --*owner_count_;
}

void ShmMapping::AlsoCountIn(std::shared_ptr<std::atomic<int>> count) {
  owner_count_ = std::move(count);
  ++*owner_count_;
}

absl::Status ShmMapping::CheckSize() const {
  if (absl::Status s = CheckNotLost(); !s.ok()) return s;
  if (superseded_.load()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared memory '", name_, "' (", size_,
        " bytes here) was registered again since this mapping of it failed (", superseded_why_,
        "): gstabd maps an object once, so this registration of it is over: register the "
        "gradients again"));
  }
  struct stat st;
  if (fstat(fd_, &st) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot stat shared memory '", name_, "': ", strerror(errno)));
  }
  if (static_cast<uint64_t>(st.st_size) < size_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared memory '", name_, "' shrank from ", size_, " to ", st.st_size,
        " bytes after it was registered (was it truncated?): register the gradients again"));
  }
  // Pages released since (a hole punched, MADV_REMOVE) would come back on gstabd's account.
  if (absl::Status s = CheckAllocated(name_, st); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(s.message(), "; it changed after it was registered"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ShmMapping>> MappingRegistry::Acquire(const std::string& name,
                                                                     uint64_t max_bytes,
                                                                     std::optional<uid_t> owner) {
  absl::MutexLock lock(&mu_);
  PruneAndCountLive(&mappings_);  // names nobody maps any more
  if (auto it = mappings_.find(name); it != mappings_.end()) {
    std::shared_ptr<ShmMapping> live = it->second.lock();
    if (live != nullptr && live->IsCurrent()) {
      if (owner.has_value() && live->owner() != *owner) {
        return NotTheOwners(name, live->owner(), *owner);
      }
      return live;
    }
  }
  if (*open_ >= max_mappings_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot map shared memory '", name, "': gstabd already maps ", max_mappings_,
        " objects for its jobs' workers, its cap (--max_mappings): put the gradients in fewer "
        "objects, detach workers that are done, or raise the cap (within the kernel's "
        "vm.max_map_count)"));
  }
  absl::StatusOr<std::shared_ptr<ShmMapping>> opened =
      ShmMapping::Open(name, max_bytes, open_, owner);
  if (!opened.ok()) {
    mappings_.erase(name);
    return opened.status();
  }
  // One usable mapping an object: under a second name (a hard link) or a second size (grown
  // since), a second mapping's tensors could be claimed beside the first's, at other addresses,
  // and counted and scaled twice; it would also let one object take gstabd's address space
  // many times over. A mapping past its object's end (shrunk) or lost fails its steps already,
  // and is superseded below, so that it cannot become usable again.
  PruneAndCountLive(&by_object_);
  const auto first = by_object_.lower_bound({(*opened)->device(), (*opened)->inode(), 0});
  const auto last = by_object_.upper_bound({(*opened)->device(), (*opened)->inode(), UINT64_MAX});
  std::vector<std::pair<std::shared_ptr<ShmMapping>, std::string>> older;  // and why
  for (auto it = first; it != last; ++it) {
    std::shared_ptr<ShmMapping> other = it->second.lock();
    if (other == nullptr) continue;
    const absl::Status usable = other->CheckSize();
    if (usable.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shared memory '", name, "' (", (*opened)->size(), " bytes) is the object gstabd maps ",
          other->name() == name ? "already" : absl::StrCat("already as '", other->name(), "'"),
          " (", other->size(),
          " bytes) for a registration still in use, or for this one (two of its buffers naming "
          "one object under two names): gstabd maps an object once, under one name at one size, "
          "so that no gradient in it is counted or scaled twice. Name each object once, register "
          "a new object, or let that registration go first (detach, or register again without "
          "it)"));
    }
    older.emplace_back(std::move(other), std::string(usable.message()));
  }
  // Mappings superseded but still held (by registrations not yet let go) take gstabd's address
  // space, each at its size, for memory the object holds once: a worker that resized an object
  // over and over could take it all. A few are a resize's normal course (the other local ranks
  // register again one by one).
  if (older.size() >= kMaxMappingsPerObject) {
    mappings_.erase(name);
    return absl::ResourceExhaustedError(absl::StrCat(
        "shared memory '", name, "': gstabd maps this object ", older.size(),
        " times already, at earlier sizes, for registrations that have not let go of it, its cap "
        "(",
        kMaxMappingsPerObject,
        "): register the gradients of those workers again (or detach them) before resizing it "
        "again"));
  }
  // The owner is known once the object is open; a refused one is unmapped on return.
  const uid_t object_owner = (*opened)->owner();
  std::shared_ptr<std::atomic<int>>& owned = by_owner_[object_owner];
  if (owned == nullptr) owned = std::make_shared<std::atomic<int>>(0);
  if (*owned >= max_per_owner_) {
    mappings_.erase(name);
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot map shared memory '", name, "': gstabd already maps ", max_per_owner_,
        " objects of uid ", object_owner,
        ", its cap per owner (--max_mappings_per_owner): put the gradients in fewer objects, or "
        "detach workers that are done"));
  }
  (*opened)->AlsoCountIn(owned);
  for (auto& [other, why] : older) other->Supersede(std::move(why));
  by_object_[{(*opened)->device(), (*opened)->inode(), ++serial_}] = *opened;
  mappings_[name] = *opened;
  return opened;
}

std::optional<ShmRemoval> MappingRegistry::RemoveUnlessMapped(const ShmObject& object,
                                                              std::string* error) {
  absl::MutexLock lock(&mu_);
  const auto first = by_object_.lower_bound({object.device, object.inode, 0});
  const auto last = by_object_.upper_bound({object.device, object.inode, UINT64_MAX});
  for (auto it = first; it != last; ++it) {
    if (!it->second.expired()) return std::nullopt;
  }
  return RemoveIfStill(object, error);
}

}  // namespace gstab
