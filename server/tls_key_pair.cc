#include "server/tls_key_pair.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace gstab {
namespace {

struct FreeBio {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct FreeX509 {
  void operator()(X509* x) const { X509_free(x); }
};
struct FreeKey {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, FreeBio> ReadOnly(const std::string& text) {
  return std::unique_ptr<BIO, FreeBio>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// A passphrase is never asked for (OpenSSL's default asks the terminal): gRPC cannot use an
// encrypted key either.
int NoPassphrase(char*, int, int, void*) { return 0; }

// Whether `pem`, which OpenSSL read nothing from, ends inside a block that begins as one of the
// kind `marker` names: a file caught in the middle of its writing (a renewal written in place),
// which mends itself and is no bad command line. A whole block that does not parse (an
// encrypted key, a damaged file) is not cut short.
bool CutShort(const std::string& pem, absl::string_view marker) {
  const size_t last = pem.rfind("-----BEGIN ");
  return last != std::string::npos && pem.find("-----END ", last) == std::string::npos &&
         absl::StrContains(pem, marker);
}

// Why no certificate was read from `pem`: cut short (FAILED_PRECONDITION), or `none_in_it`
// (INVALID_ARGUMENT), each after `named_by`.
absl::Status NoCertificate(const std::string& pem, absl::string_view named_by,
                           absl::string_view none_in_it) {
  if (CutShort(pem, "-----BEGIN CERTIFICATE-----")) {
    return absl::FailedPreconditionError(absl::StrCat(
        named_by, " holds a certificate gstabd cannot read (cut short: being written?)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(named_by, none_in_it));
}

}  // namespace

absl::Status CheckCertificates(const std::string& pem, absl::string_view named_by) {
  std::unique_ptr<BIO, FreeBio> text = ReadOnly(pem);
  if (text == nullptr) return absl::ResourceExhaustedError("out of memory reading the TLS files");
  std::unique_ptr<X509, FreeX509> first(
      PEM_read_bio_X509(text.get(), nullptr, &NoPassphrase, nullptr));
  ERR_clear_error();
  if (first != nullptr) return absl::OkStatus();
  return NoCertificate(pem, named_by,
                       " holds no certificate: give the CA's certificate (not a key, nor a "
                       "certificate request)");
}

absl::Status CheckKeyPair(const std::string& cert_pem, const std::string& key_pem,
                          absl::string_view cert_named_by, absl::string_view key_named_by) {
  std::unique_ptr<BIO, FreeBio> cert_text = ReadOnly(cert_pem), key_text = ReadOnly(key_pem);
  if (cert_text == nullptr || key_text == nullptr) {
    return absl::ResourceExhaustedError("out of memory reading the TLS files");
  }
  // The first certificate is the one the key signs for; a chain's others follow it.
  std::unique_ptr<X509, FreeX509> cert(
      PEM_read_bio_X509(cert_text.get(), nullptr, &NoPassphrase, nullptr));
  std::unique_ptr<EVP_PKEY, FreeKey> key(
      PEM_read_bio_PrivateKey(key_text.get(), nullptr, &NoPassphrase, nullptr));
  ERR_clear_error();  // what failed is said below; the next reader starts clean
  if (cert == nullptr) {
    return NoCertificate(cert_pem, cert_named_by,
                         " holds no certificate (is it the key, or the CA's?)");
  }
  if (key == nullptr) {
    if (CutShort(key_pem, "PRIVATE KEY-----") && !absl::StrContains(key_pem, "ENCRYPTED")) {
      return absl::FailedPreconditionError(absl::StrCat(
          key_named_by, " holds a private key gstabd cannot read (cut short: being written?)"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(key_named_by,
                     " holds no private key gstabd can read (an encrypted key is not taken: "
                     "give the key without its passphrase)"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    // Not a bad command line for certain: files read in the middle of their renewal (written
    // one after the other) mend themselves, and a service manager should start gstabd again.
    return absl::FailedPreconditionError(
        absl::StrCat(key_named_by, " is not the key of ", cert_named_by,
                     "'s certificate: give the key made with that certificate (the files of "
                     "one Secret, one certificate)"));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0) {
    LOG(WARNING) << cert_named_by << "'s certificate has expired: TLS clients refuse it until "
                 << "a renewed one is written there";
  }
  return absl::OkStatus();
}

}  // namespace gstab
