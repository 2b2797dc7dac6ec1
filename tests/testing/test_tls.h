// Certificates for tests of gstabd's TCP ports: a CA and one certificate it signs for the name
// "gstab-peer", for server and client use alike, and client certificates of other names, made
// with openssl; the client environment that names them; the address gstabd's --listen took.
#pragma once

#include <cstdlib>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace gstab::testing {

struct TestTls {
  std::string ca;  // PEM files in the folder given to MakeTestTls
  std::string cert;
  std::string key;
};

// Makes dir/ca.pem (a fresh CA), dir/peer.pem and dir/peer.key; fails the test if openssl does.
inline TestTls MakeTestTls(const std::string& dir) {
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1";
  auto [rc, out] =
      RunShell("cd " + dir + " && openssl req -x509" + ec +
               " -keyout ca.key -out ca.pem -subj /CN=gstab-test-ca && openssl req" + ec +
               " -keyout peer.key -out peer.csr -subj /CN=gstab-peer && printf "
               "'subjectAltName=DNS:gstab-peer\nextendedKeyUsage=serverAuth,clientAuth\n' > ext && "
               "openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
               "-extfile ext -out peer.pem");
  EXPECT_EQ(rc, 0) << out;
  return {dir + "/ca.pem", dir + "/peer.pem", dir + "/peer.key"};
}

// A client certificate of MakeTestTls(dir)'s CA with subject `subject` ("/CN=alice") and
// subjectAltName `san` ("URI:spiffe://...", if any): dir/<file>.pem and dir/<file>.key.
inline TestTls MakeClientCertificate(const std::string& dir, const std::string& file,
                                     const std::string& subject, const std::string& san = "") {
  const std::string ext =
      "extendedKeyUsage=clientAuth\\n" + (san.empty() ? "" : "subjectAltName=" + san + "\\n");
  auto [rc, out] = RunShell(
      "cd " + dir + " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes" +
      " -keyout " + file + ".key -out " + file + ".csr -subj " + subject + " && printf '" + ext +
      "' > " + file + ".ext && openssl x509 -req -in " + file +
      ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile " + file + ".ext -out " +
      file + ".pem");
  EXPECT_EQ(rc, 0) << out;
  return {dir + "/ca.pem", dir + "/" + file + ".pem", dir + "/" + file + ".key"};
}

// The client environment of client_lib/transport.h, set for one test and unset after.
class TlsEnvironment {
 public:
  explicit TlsEnvironment(const TestTls& tls) { Use(tls); }
  ~TlsEnvironment() {
    for (const char* v : {"GSTAB_TLS_CA", "GSTAB_TLS_CERT", "GSTAB_TLS_KEY", "GSTAB_TLS_NAME"}) {
      unsetenv(v);
    }
  }
  void Use(const TestTls& tls) {
    setenv("GSTAB_TLS_CA", tls.ca.c_str(), 1);
    setenv("GSTAB_TLS_CERT", tls.cert.c_str(), 1);
    setenv("GSTAB_TLS_KEY", tls.key.c_str(), 1);
    setenv("GSTAB_TLS_NAME", "gstab-peer", 1);  // the name in gstabd's test certificate
  }
};

// The flags of a gstabd serving 127.0.0.1 (a free port) over mutual TLS with `tls`.
inline std::vector<std::string> ListenFlags(const TestTls& tls) {
  return {"--listen=127.0.0.1:0", "--tls_cert=" + tls.cert, "--tls_key=" + tls.key,
          "--tls_client_ca=" + tls.ca};
}

// The TCP address `daemon` (started with ListenFlags) logged last, waiting up to 5 s for it;
// empty, with the test failed, if none. A restarted gstabd appends to the same log.
inline std::string ListenAddress(const DaemonProcess& daemon, size_t starts = 1) {
  const std::regex logged("on TCP 127\\.0\\.0\\.1:([0-9]+) \\(mutual TLS\\)");
  for (int i = 0; i < 100; ++i) {
    const std::string log = daemon.Log();
    std::string port;
    size_t seen = 0;
    for (std::sregex_iterator m(log.begin(), log.end(), logged), end; m != end; ++m, ++seen) {
      port = (*m)[1].str();
    }
    if (seen >= starts) return "127.0.0.1:" + port;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ADD_FAILURE() << "gstabd logged no TCP address: " << daemon.Log();
  return "";
}

// A gstabd serving its socket and 127.0.0.1 over mutual TLS with `tls`; its TCP address.
class TcpDaemon {
 public:
  TcpDaemon(const std::string& dir, const TestTls& tls, std::vector<std::string> flags = {}) {
    for (std::string& f : ListenFlags(tls)) flags.push_back(std::move(f));
    auto d = DaemonProcess::Start(dir, flags);
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) return;
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
    address_ = ListenAddress(*daemon_);
  }
  DaemonProcess& daemon() { return *daemon_; }
  const std::string& address() const { return address_; }

 private:
  std::unique_ptr<DaemonProcess> daemon_;
  std::string address_;
};

}  // namespace gstab::testing
