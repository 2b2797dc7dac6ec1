// The PEMs a dial between gstabd processes shows (DialPems): certificates renewed in place are
// read again at each dial, and a read in the middle of a renewal (a new certificate with the
// old key) is not shown: the last pair read whole is.
#include "server/peer_tls.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_tls.h"

namespace gstab {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(DialPemsTest, ARenewalCaughtHalfWrittenIsNotShown) {
  testing::TempDir dir;
  const testing::TestTls files = testing::MakeTestTls(dir.path());
  const testing::TestTls renewed =
      testing::MakeClientCertificate(dir.path(), "renewed", "/CN=gstab-peer");
  absl::StatusOr<MutualTls> start = LoadMutualTls({"peer_tls_ca", "peer_tls_cert", "peer_tls_key"},
                                                  {files.ca, files.cert, files.key});
  ASSERT_TRUE(start.ok()) << start.status();
  const std::string first_cert = Read(files.cert), first_key = Read(files.key);
  EXPECT_EQ(DialPems(*start).cert, first_cert);

  // The new certificate is written, its key not yet: the last whole pair is shown.
  std::filesystem::copy_file(renewed.cert, files.cert,
                             std::filesystem::copy_options::overwrite_existing);
  MutualTls shown = DialPems(*start);
  EXPECT_EQ(shown.cert, first_cert);
  EXPECT_EQ(shown.key, first_key);

  // The key follows: the renewed pair is shown.
  std::filesystem::copy_file(renewed.key, files.key,
                             std::filesystem::copy_options::overwrite_existing);
  shown = DialPems(*start);
  EXPECT_EQ(shown.cert, Read(renewed.cert));
  EXPECT_EQ(shown.key, Read(renewed.key));

  // A third certificate caught without its key: the renewed pair (the last whole one), not
  // the start's, which may have expired by then.
  const testing::TestTls third =
      testing::MakeClientCertificate(dir.path(), "third", "/CN=gstab-peer");
  std::filesystem::copy_file(third.cert, files.cert,
                             std::filesystem::copy_options::overwrite_existing);
  shown = DialPems(*start);
  EXPECT_EQ(shown.cert, Read(renewed.cert));
  EXPECT_EQ(shown.key, Read(renewed.key));
}

}  // namespace
}  // namespace gstab
