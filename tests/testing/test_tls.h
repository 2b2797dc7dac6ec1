// Certificates for tests of gstabd's TCP ports: a CA and one certificate it signs for the name
// "gstab-peer", for server and client use alike, made with openssl.
#pragma once

#include <string>

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

}  // namespace gstab::testing
