// TLS files renewed in place while gstabd and its clients run for months: gstabd reads its
// --listen files again every --tls_reload_s (the last good ones kept when a renewal cannot be
// read), and a client its own every GSTAB_TLS_RELOAD_S.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "client_lib/client.h"
#include "client_lib/transport.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_tls.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::TcpDaemon;
using testing::TempDir;
using testing::TestTls;
using testing::TestWorker;
using testing::TlsEnvironment;

// A renewal that cannot be read keeps the last good files served (docs/daemon.md,
// --tls_reload_s): a key file gone for a moment (moved away and back, as a renewal that deletes
// and writes again leaves it).
TEST(TcpTest, ARenewalThatCannotBeReadKeepsTheLastGoodFiles) {
  TempDir dir;
  const std::string live = dir.path() + "/live";
  std::filesystem::create_directories(live);
  const TestTls tls = testing::MakeTestTls(dir.path());
  for (const auto& [from, to] : {std::pair{tls.ca, "ca.pem"}, std::pair{tls.cert, "peer.pem"},
                                 std::pair{tls.key, "peer.key"}}) {
    std::filesystem::copy_file(from, live + "/" + to);
  }
  const TestTls served{live + "/ca.pem", live + "/peer.pem", live + "/peer.key"};
  TcpDaemon tcp(dir.path(), served, {"--tls_reload_s=1"});
  ASSERT_FALSE(tcp.address().empty());
  TlsEnvironment env(tls);
  ASSERT_TRUE(Client::Connect(tcp.address(), absl::Seconds(3)).ok());
  std::filesystem::rename(served.key, served.key + ".away");
  absl::SleepFor(absl::Seconds(3));  // reloads while it is gone
  auto gone = Client::Connect(tcp.address(), absl::Seconds(3));
  EXPECT_TRUE(gone.ok()) << "a key file gone for a moment stopped the serving: " << gone.status();
  std::filesystem::rename(served.key + ".away", served.key);
}

// cert-manager renews a Secret's files in place, and gstabd runs for months: its TCP port serves
// the renewed certificate, and trusts the renewed CA, without a restart.
TEST(TcpTest, CertificatesRenewedInPlaceAreServedWithoutARestart) {
  TempDir dir;
  const std::string live = dir.path() + "/live";
  std::filesystem::create_directories(live);
  std::filesystem::create_directories(dir.path() + "/old");
  std::filesystem::create_directories(dir.path() + "/new");
  const TestTls old_tls = testing::MakeTestTls(dir.path() + "/old");
  const TestTls new_tls = testing::MakeTestTls(dir.path() + "/new");  // another CA's too
  // As a Secret volume renews them: the whole set at once.
  auto install = [&](const TestTls& tls) {
    for (const auto& [from, to] : {std::pair{tls.ca, "ca.pem"}, std::pair{tls.cert, "peer.pem"},
                                   std::pair{tls.key, "peer.key"}}) {
      std::filesystem::copy_file(from, live + "/" + to + ".new",
                                 std::filesystem::copy_options::overwrite_existing);
      std::filesystem::rename(live + "/" + to + ".new", live + "/" + to);
    }
  };
  install(old_tls);
  const TestTls served{live + "/ca.pem", live + "/peer.pem", live + "/peer.key"};
  TcpDaemon tcp(dir.path(), served, {"--tls_reload_s=1"});
  ASSERT_FALSE(tcp.address().empty());
  {
    TlsEnvironment env(old_tls);
    auto client = Client::Connect(tcp.address(), absl::Seconds(3));
    EXPECT_TRUE(client.ok()) << client.status();
  }

  install(new_tls);
  TlsEnvironment env(new_tls);  // trusts the new CA alone, and shows its certificate
  absl::StatusOr<std::unique_ptr<Client>> renewed = absl::UnavailableError("not tried");
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       !renewed.ok() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(500));
    renewed = Client::Connect(tcp.address(), absl::Seconds(2));
  }
  EXPECT_TRUE(renewed.ok()) << "the renewed certificate is not served: " << renewed.status();
  env.Use(old_tls);  // the old CA's certificate is trusted no more
  auto old = Client::Connect(tcp.address(), absl::Seconds(2));
  EXPECT_FALSE(old.ok());
}

// A client that runs for months over TCP reads its TLS files again (GSTAB_TLS_RELOAD_S): when
// gstabd comes back with a certificate of a renewed CA, the client, its files renewed in place
// too, connects to it. gstabd's certificate must still name the host dialled (or
// GSTAB_TLS_NAME).
TEST(TcpTest, AClientConnectsAgainWithItsRenewedCertificates) {
  TempDir dir;
  for (const char* sub : {"/old", "/new", "/client", "/server"}) {
    std::filesystem::create_directories(dir.path() + sub);
  }
  const TestTls old_tls = testing::MakeTestTls(dir.path() + "/old");
  const TestTls new_tls = testing::MakeTestTls(dir.path() + "/new");
  auto install = [](const TestTls& from, const std::string& to) {
    for (const auto& [file, name] : {std::pair{from.ca, "ca.pem"}, std::pair{from.cert, "peer.pem"},
                                     std::pair{from.key, "peer.key"}}) {
      std::filesystem::copy_file(file, to + "/" + name + ".new",
                                 std::filesystem::copy_options::overwrite_existing);
      std::filesystem::rename(to + "/" + name + ".new", to + "/" + name);
    }
    return TestTls{to + "/ca.pem", to + "/peer.pem", to + "/peer.key"};
  };
  const TestTls server = install(old_tls, dir.path() + "/server");
  const TestTls client_files = install(old_tls, dir.path() + "/client");
  std::string address;
  std::vector<std::string> flags = testing::ListenFlags(server);
  {
    TcpDaemon first(dir.path(), server);
    ASSERT_FALSE(first.address().empty());
    address = first.address();
    TlsEnvironment env(client_files);
    unsetenv("GSTAB_TLS_NAME");  // gstabd's certificate names gstab-peer, not 127.0.0.1
    auto misnamed = Client::Connect(address, absl::Seconds(2));
    EXPECT_FALSE(misnamed.ok()) << "a certificate of another name was taken";
  }
  TlsEnvironment env(client_files);
  setenv("GSTAB_TLS_RELOAD_S", "1", 1);
  // gstabd on a fixed port: the one the first took, free again.
  flags[0] = "--listen=" + address;
  auto d = DaemonProcess::Start(dir.path() + "/server", flags);
  ASSERT_TRUE(d.ok()) << d.status();
  auto client = Client::Connect(address, absl::Seconds(3));
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Identify().ok());
  EXPECT_EQ(d->Stop().value_or(-1), 0);

  install(new_tls, dir.path() + "/server");
  install(new_tls, dir.path() + "/client");
  d = DaemonProcess::Start(dir.path() + "/server", flags);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::Status again = absl::UnavailableError("not tried");
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       !again.ok() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(300));
    again = (*client)->Identify().status();
  }
  EXPECT_TRUE(again.ok()) << "the client showed its old certificate: " << again;
  unsetenv("GSTAB_TLS_RELOAD_S");
  EXPECT_EQ(d->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace gstab
