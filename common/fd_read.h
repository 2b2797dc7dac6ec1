// Reading a whole file from its descriptor, bounded: what the checkpoint store, the PEM reader
// and gstabctl's import share.
#pragma once

#include <cstddef>
#include <string>

namespace gstab {

// Appends what `fd` holds from its offset to its end to `out`, retrying reads a signal cut
// short. 0 at the end; the read's errno when one fails; EFBIG, with nothing past the bound
// appended, once more than `max_bytes` would be in `out`.
int ReadToEnd(int fd, size_t max_bytes, std::string* out);

}  // namespace gstab
