#include "common/pem_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace gstab {

absl::StatusOr<std::string> ReadPemFile(const std::string& named_by, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {  // the machine's (a secret not mounted yet, no permission): not the flag's
    return absl::FailedPreconditionError(absl::StrCat(
        named_by, "=", path, ": not a readable PEM file (", std::strerror(errno), ")"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (!in || text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(named_by, "=", path, ": not a readable PEM file"));
  }
  return text.str();
}

}  // namespace gstab
