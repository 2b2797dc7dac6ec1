// Whether a certificate and a private key, as PEM text, belong together: checked at start, so
// that a key of another certificate (a Secret's files mixed up) is refused then, rather than
// failing every TLS handshake of a gstabd that says it serves.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gstab {

// INVALID_ARGUMENT, naming the flags (`cert_named_by`, `key_named_by`: "--tls_cert"), when the
// certificate's text holds no certificate, or the key's no private key that can be read without
// a passphrase; FAILED_PRECONDITION when the key is not the certificate's, or either is cut
// short (files read in the middle of their renewal, or mixed up: a service manager starts
// gstabd again, where exit 2 would stop it for good). Logs a warning for a certificate past its
// end date (a renewed one may be on its way: the files are watched).
absl::Status CheckKeyPair(const std::string& cert_pem, const std::string& key_pem,
                          absl::string_view cert_named_by, absl::string_view key_named_by);

// INVALID_ARGUMENT, naming the flag, when a CA file's text (`pem`) holds no certificate (a key,
// a certificate request); FAILED_PRECONDITION when it holds one cut short.
absl::Status CheckCertificates(const std::string& pem, absl::string_view named_by);

}  // namespace gstab
