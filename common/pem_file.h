// Reading a PEM file (a certificate, key or CA) that a flag or an environment variable names.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace gstab {

// The text of the PEM file at `path`, "<named_by>=<path>: not a readable PEM file (why)" else:
// FAILED_PRECONDITION when it cannot be opened or read, or is empty (a secret not mounted or
// not written yet), INVALID_ARGUMENT when it holds no PEM block (the wrong file named).
// `named_by` is what the user set ("--tls_cert", "GSTAB_TLS_CA").
absl::StatusOr<std::string> ReadPemFile(const std::string& named_by, const std::string& path);

}  // namespace gstab
