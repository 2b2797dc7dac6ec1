#include "client_lib/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/dtype_proto.h"
#include "common/shm_names.h"

namespace gstab {
namespace {

constexpr uint64_t kAlign = 64;
// Far beyond any host's memory, and short of overflowing the offsets.
constexpr uint64_t kMaxBytes = uint64_t{1} << 50;

constexpr const char* kShmHint =
    " (enlarge the /dev/shm that gstabd shares: the node's, for a container with the host's IPC "
    "namespace as on Kubernetes, where a volume mounted on /dev/shm would hide it from gstabd; "
    "Docker's --shm-size otherwise)";

}  // namespace

GradientArena::~GradientArena() {
  if (base_ != nullptr) munmap(base_, size_);
  Unlink();
}

void GradientArena::Unlink() {
  // A forked child's copy leaves the object to its parent, which gstabd maps by its name.
  if (name_.empty() || unlinked_ || getpid() != owner_) return;
  shm_unlink(name_.c_str());
  unlinked_ = true;
}

size_t GradientArena::AddTensor(std::string name, uint64_t numel, DType dtype, std::string group,
                                v1::Reduction reduction) {
  if (base_ != nullptr) return kNotAdded;  // it would lie outside the object, over tensor 0
  tensors_.push_back(Entry{std::move(name), std::move(group), reduction, numel, dtype});
  return tensors_.size() - 1;
}

absl::Status GradientArena::Allocate() {
  if (base_ != nullptr) return absl::FailedPreconditionError("arena already allocated");
  if (tensors_.empty()) return absl::InvalidArgumentError("arena has no tensors");
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const Entry& t : tensors_) {
    if (!IsValidDType(static_cast<uint32_t>(t.dtype))) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has dtype ", static_cast<uint32_t>(t.dtype),
                       ", not one of float32 (0), bfloat16 (1), float16 (2)"));
    }
    if (t.numel > kMaxBytes / ElementSize(t.dtype) ||
        (t.numel * ElementSize(t.dtype) + kAlign - 1) / kAlign * kAlign > kMaxBytes - offset) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' (", t.numel,
                                                     " elements) takes the arena past ", kMaxBytes,
                                                     " bytes: is its element count right?"));
    }
    offsets.push_back(offset);
    offset += (t.numel * ElementSize(t.dtype) + kAlign - 1) / kAlign * kAlign;
  }
  const uint64_t progress_offset = offset;  // RegisterBuffersRequest.progress: gstabd's word
  offset += kAlign;
  RemoveStaleShmObjects();
  // Refused at once when /dev/shm has less room free: reserving the pages of a size beyond it
  // could fill the host's memory first (a /dev/shm as large as it), and be killed for it.
  struct statvfs shm;
  if (statvfs("/dev/shm", &shm) == 0 && shm.f_blocks != 0 &&  // 0: a tmpfs without a size
      offset > static_cast<uint64_t>(shm.f_bavail) * static_cast<uint64_t>(shm.f_frsize)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", offset, " bytes of shared memory in /dev/shm: it has ",
                     static_cast<uint64_t>(shm.f_bavail) * shm.f_frsize, " bytes free", kShmHint));
  }
  name_ = NewShmName();
  owner_ = getpid();
  const int fd = shm_open(name_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    const int e = errno;
    name_.clear();
    const std::string message =
        absl::StrCat("cannot create shared memory in /dev/shm: ", strerror(e));
    if (e == EMFILE || e == ENFILE || e == ENOSPC || e == ENOMEM) {  // ENOSPC: out of inodes
      return absl::ResourceExhaustedError(message);
    }
    if (e == EACCES) return absl::PermissionDeniedError(message);
    return absl::InternalError(message);
  }
  size_ = static_cast<size_t>(offset);
  // The pages are reserved now: a sparse object (ftruncate alone) that /dev/shm has no room for
  // would kill the first process to touch a missing page with SIGBUS, gstabd included.
  int reserved = size_ == 0 ? EINVAL : 0;
  // In pieces: a signal cuts a reservation short and undoes it, so a piece is retried alone.
  constexpr size_t kPiece = size_t{256} << 20;
  for (size_t at = 0; reserved == 0 && at < size_; at += kPiece) {
    const auto len = static_cast<off_t>(std::min(kPiece, size_ - at));
    do {
      reserved = posix_fallocate(fd, static_cast<off_t>(at), len);
    } while (reserved == EINTR);
  }
  void* base = MAP_FAILED;
  if (reserved == 0) base = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int e = reserved != 0 ? reserved : errno;
  close(fd);
  if (base == MAP_FAILED) {
    shm_unlink(name_.c_str());
    name_.clear();
    // No room (in /dev/shm, or for the mapping in this process) is exhaustion; anything else
    // (a limit of the file system's, a refusal) is not, and room would not help.
    const bool no_room = e == ENOSPC || e == ENOMEM || e == EFBIG;
    return absl::Status(
        no_room ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal,
        absl::StrCat("cannot allocate ", size_, " bytes of shared memory in /dev/shm: ",
                     strerror(e), e == ENOSPC ? kShmHint : ""));
  }
  base_ = static_cast<unsigned char*>(base);
  progress_offset_ = progress_offset;
  for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i].byte_offset = offsets[i];
  return absl::OkStatus();
}

void* GradientArena::data(size_t tensor) const {
  if (base_ == nullptr || tensor >= tensors_.size()) return nullptr;
  return base_ + tensors_[tensor].byte_offset;
}

v1::RegisterBuffersRequest GradientArena::RegistrationRequest() const {
  // One buffer covering the whole object per dtype present, so each tensor's element offset
  // is exact.
  v1::RegisterBuffersRequest request;
  std::vector<int> buffer_of_dtype(3, -1);
  for (const Entry& t : tensors_) {
    int& b = buffer_of_dtype[static_cast<size_t>(t.dtype)];
    if (b < 0) {
      b = request.buffers_size();
      v1::Buffer* buf = request.add_buffers();
      buf->set_transport(v1::TRANSPORT_HOST_SHM);
      buf->set_shm_name(name_);
      buf->set_offset(0);
      buf->set_size_bytes(size_ / ElementSize(t.dtype) * ElementSize(t.dtype));
      buf->set_dtype(DTypeToProto(t.dtype));
    }
    v1::Tensor* tensor = request.add_tensors();
    tensor->set_name(t.name);
    tensor->set_buffer(static_cast<uint32_t>(b));
    tensor->set_offset(t.byte_offset / ElementSize(t.dtype));
    tensor->set_numel(t.numel);
    tensor->set_group(t.group);
    tensor->set_reduction(t.reduction);
  }
  request.mutable_progress()->set_buffer(0);  // every buffer covers the whole object
  request.mutable_progress()->set_offset(progress_offset_);
  return request;
}

}  // namespace gstab
