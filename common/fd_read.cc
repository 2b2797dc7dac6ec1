#include "common/fd_read.h"

#include <unistd.h>

#include <cerrno>

namespace gstab {

int ReadToEnd(int fd, size_t max_bytes, std::string* out) {
  char chunk[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return 0;
    if (out->size() + static_cast<size_t>(n) > max_bytes) return EFBIG;
    out->append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace gstab
