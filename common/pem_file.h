// Reading a PEM file (a certificate, key or CA) that a flag or an environment variable names.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace gstab {

// The text of the PEM file at `path`. INVALID_ARGUMENT "<named_by>=<path>: not a readable PEM
// file" when it cannot be read or holds no PEM block; `named_by` is what the user set
// ("--tls_cert", "GSTAB_TLS_CA").
absl::StatusOr<std::string> ReadPemFile(const std::string& named_by, const std::string& path);

}  // namespace gstab
