#include "server/shm_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/weak_map.h"

namespace gstab {

absl::StatusOr<std::shared_ptr<ShmMapping>> ShmMapping::Open(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    const int err = errno;
    const std::string what =
        absl::StrCat("cannot open shared memory '", name, "': ", strerror(err));
    if (err == ENOENT) return absl::NotFoundError(what);
    if (err == EACCES) return absl::PermissionDeniedError(what);
    return absl::InternalError(what);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("shared memory '", name, "' is empty"));
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (data == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("cannot map shared memory '", name, "': ", strerror(err)));
  }
  return std::shared_ptr<ShmMapping>(new ShmMapping(name, static_cast<unsigned char*>(data), size));
}

ShmMapping::~ShmMapping() { munmap(data_, size_); }

absl::StatusOr<std::shared_ptr<ShmMapping>> MappingRegistry::Acquire(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (std::shared_ptr<ShmMapping> live = mappings_[name].lock()) return live;
  absl::StatusOr<std::shared_ptr<ShmMapping>> opened = ShmMapping::Open(name);
  if (!opened.ok()) {
    mappings_.erase(name);
    return opened.status();
  }
  mappings_[name] = *opened;
  return opened;
}

int MappingRegistry::LiveMappings() {
  absl::MutexLock lock(&mu_);
  return PruneAndCountLive(&mappings_);
}

}  // namespace gstab
