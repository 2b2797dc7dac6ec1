// gstabd's TCP port (--listen): mutual TLS only. A client with a certificate of the CA gstabd
// was given reaches the jobs as over the socket (observers, gstabctl): its own, or every job
// for the certificates --tls_operators names. It registers no host shared memory (gstabd
// cannot tell whose it is), and clients without such a certificate are refused.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client_lib/client.h"
#include "client_lib/transport.h"
#include "grpc/health/v1/health.grpc.pb.h"
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

TEST(TcpTest, AnOperatorsCertificateActsOnEveryJobButRegistersNoSharedMemory) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  const TestTls ops = testing::MakeClientCertificate(dir.path(), "ops", "/CN=gstab-ops");
  const TestTls alice = testing::MakeClientCertificate(dir.path(), "alice", "/CN=alice");
  TcpDaemon tcp(dir.path(), tls, {"--tls_operators=gstab-ops"});
  ASSERT_FALSE(tcp.address().empty());
  auto worker = TestWorker::Create(tcp.daemon().socket(), testing::JobOptions("tcp-job"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 7);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  AttachOptions observer = testing::JobOptions("tcp-job");
  observer.observer = true;

  // The job is its socket worker's uid's: a certificate --tls_operators does not name may not
  // act on it.
  TlsEnvironment env(alice);
  auto other = Client::Connect(tcp.address(), absl::Seconds(5));
  ASSERT_TRUE(other.ok()) << other.status();
  const absl::Status refused = (*other)->Attach(observer);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find("this client's certificate is named 'alice'"), std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("--tls_operators"), std::string::npos) << refused;

  env.Use(ops);
  auto remote = Client::Connect(tcp.address(), absl::Seconds(5));
  ASSERT_TRUE(remote.ok()) << remote.status();
  ASSERT_TRUE((*remote)->Attach(observer).ok());
  absl::StatusOr<v1::GetStatsResponse> stats = (*remote)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->last_step(), 1u);
  v1::PolicyConfig monitor;
  monitor.set_policy(v1::POLICY_MONITOR);
  ASSERT_TRUE((*remote)->UpdateConfig(monitor).ok());
  (*worker)->Fill(2, 7);
  absl::StatusOr<v1::StepResponse> step = (*worker)->client().Step(2);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->config_version(), 2u) << "the change made over TCP reached the job";

  // gstabctl takes the address where it takes a socket path, and says how gstabd sees it.
  auto [rc, out] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                     " --socket=" + tcp.address() + " status 2>&1");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("tcp-job"), std::string::npos) << out;
  EXPECT_NE(out.find("caller: certificate 'gstab-ops', which acts on every job"), std::string::npos)
      << out;
  env.Use(alice);
  std::tie(rc, out) = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                        " --socket=" + tcp.address() + " status 2>&1");
  EXPECT_NE(out.find("caller: certificate 'alice', which acts on its own jobs only"),
            std::string::npos)
      << out;
  env.Use(ops);

  // A worker over TCP: gstabd cannot tell who owns a shared-memory object.
  auto tcp_worker = TestWorker::Create(tcp.address(), testing::JobOptions("tcp-worker"));
  ASSERT_FALSE(tcp_worker.ok());
  EXPECT_EQ(tcp_worker.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(tcp_worker.status().message().find("only over gstabd's unix socket"), std::string::npos)
      << tcp_worker.status();
}

TEST(TcpTest, ClientsWithoutACertificateOfTheClientCaAreRefusedAndTheSocketServesOn) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() + "/other");
  const TestTls tls = testing::MakeTestTls(dir.path());
  const TestTls other = testing::MakeTestTls(dir.path() + "/other");  // another CA's
  TcpDaemon tcp(dir.path(), tls);
  ASSERT_FALSE(tcp.address().empty());

  // A certificate of another CA, though the client trusts gstabd's.
  TlsEnvironment env(tls);
  setenv("GSTAB_TLS_CERT", other.cert.c_str(), 1);
  setenv("GSTAB_TLS_KEY", other.key.c_str(), 1);
  auto refused = Client::Connect(tcp.address(), absl::Seconds(2));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("over mutual TLS"), std::string::npos)
      << refused.status();

  // No certificate at all: a plain gRPC client that checks gstabd's, and the same client with
  // the CA's certificate, which gstabd answers.
  auto health = [&](bool with_certificate) {
    grpc::SslCredentialsOptions options;
    auto read = [](const std::string& path) {
      std::ifstream in(path);
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    options.pem_root_certs = read(tls.ca);
    if (with_certificate) {
      options.pem_cert_chain = read(tls.cert);
      options.pem_private_key = read(tls.key);
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("gstab-peer");
    auto channel = grpc::CreateCustomChannel(tcp.address(), grpc::SslCredentials(options), args);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    grpc::health::v1::HealthCheckResponse response;
    return grpc::health::v1::Health::NewStub(channel)->Check(&ctx, {}, &response);
  };
  EXPECT_TRUE(health(true).ok()) << health(true).error_message();
  const grpc::Status without = health(false);
  EXPECT_EQ(without.error_code(), grpc::StatusCode::UNAVAILABLE)
      << "gstabd answered a client without a certificate: " << without.error_message();

  // An address that is neither HOST:PORT nor a socket path is named.
  auto malformed = Client::Connect("node1:99999", absl::Seconds(2));
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(malformed.status().message().find("'node1:99999' is neither HOST:PORT"),
            std::string::npos)
      << malformed.status();

  // Without the environment the client says what to set.
  unsetenv("GSTAB_TLS_CA");
  auto unset = Client::Connect(tcp.address(), absl::Seconds(2));
  ASSERT_FALSE(unset.ok());
  EXPECT_EQ(unset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unset.status().message().find("GSTAB_TLS_CA is not set"), std::string::npos)
      << unset.status();

  // The socket's clients never noticed.
  auto worker = TestWorker::Create(tcp.daemon().socket(), testing::JobOptions("local"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 3);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
}

// A connection to the TCP port that never begins its TLS handshake is closed within gstabd's
// handshake timeout (20 s), not gRPC's two minutes: whoever reaches the port cannot hold
// connections open without a certificate.
TEST(TcpTest, AConnectionThatNeverHandshakesIsClosed) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  TcpDaemon tcp(dir.path(), tls);
  ASSERT_FALSE(tcp.address().empty());
  const int port = std::stoi(tcp.address().substr(tcp.address().rfind(':') + 1));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << strerror(errno);
  const timeval wait{40, 0};  // past the timeout, well short of two minutes
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait), 0);
  const absl::Time start = absl::Now();
  char byte;
  const ssize_t got = recv(fd, &byte, 1, 0);
  const absl::Duration took = absl::Now() - start;
  close(fd);
  EXPECT_EQ(got, 0) << "not closed by gstabd within 40 s: " << strerror(errno);
  EXPECT_GE(took, absl::Seconds(15));
}

// An IPv6 address without brackets, as $(POD_IP):port renders on an IPv6 cluster, served and
// dialled as with them.
TEST(TcpTest, AnIpv6AddressIsServedWithOrWithoutBrackets) {
  if (!testing::Ipv6LoopbackWorks()) GTEST_SKIP() << "no IPv6 loopback address here";
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  std::vector<std::string> flags = testing::ListenFlags(tls);
  flags[0] = "--listen=::1:0";
  auto d = DaemonProcess::Start(dir.path(), flags);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::regex logged("on TCP \\[::1\\]:([0-9]+) \\(mutual TLS\\)");
  std::smatch port;  // refers into `log`, which outlives it
  std::string log;
  for (int i = 0; i < 100; ++i) {
    log = d->Log();
    if (std::regex_search(log, port, logged)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(port.empty()) << d->Log();
  TlsEnvironment env(tls);
  for (const std::string& address : {"[::1]:" + port[1].str(), "::1:" + port[1].str()}) {
    auto [rc, out] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                       " --socket=" + address + " status 2>&1");
    EXPECT_EQ(rc, 0) << address << ": " << out;
  }
  auto [rc, out] = testing::RunShell(testing::GstabdPath() + " --socket=" + dir.path() +
                                     "/t.sock --state_dir=" + dir.path() +
                                     "/t --metrics_port=-1 --listen=[fd00::1]x:7479");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--listen='[fd00::1]x:7479' must be HOST:PORT"), std::string::npos) << out;
}

// A --listen or --peer_listen port another gstabd serves is refused at start (exit 1), not
// shared with it: gRPC's servers take SO_REUSEPORT by default, and the kernel would split
// connections between the two gstabds.
TEST(TcpTest, APortAnotherGstabdServesIsRefused) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  TcpDaemon tcp(dir.path(), tls, {"--peer_listen=127.0.0.1:0"});  // loopback: plain TCP
  ASSERT_FALSE(tcp.address().empty());
  const std::regex peers("serving peers on 127\\.0\\.0\\.1:([0-9]+)");
  std::smatch peer_port;
  const std::string log = tcp.daemon().Log();
  ASSERT_TRUE(std::regex_search(log, peer_port, peers)) << log;
  const std::string gstabd = "timeout 20 " + testing::GstabdPath() + " --socket=" + dir.path() +
                             "/other.sock --state_dir=" + dir.path() + "/other --metrics_port=-1 ";
  auto [rc, out] =
      testing::RunShell(gstabd + "--listen=" + tcp.address() + " --tls_cert=" + tls.cert +
                        " --tls_key=" + tls.key + " --tls_client_ca=" + tls.ca + " 2>&1");
  EXPECT_EQ(rc, 1) << out;  // not 124: it served
  EXPECT_NE(out.find("cannot start the gRPC server (--listen=" + tcp.address()), std::string::npos)
      << out;
  std::tie(rc, out) =
      testing::RunShell(gstabd + "--peer_listen=127.0.0.1:" + peer_port[1].str() + " 2>&1");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("cannot listen for peers on 127.0.0.1:" + peer_port[1].str()),
            std::string::npos)
      << out;
}

TEST(TcpTest, ListeningWithoutMutualTlsIsRefusedAtStart) {
  TempDir dir;
  const TestTls tls = testing::MakeTestTls(dir.path());
  const std::string base = testing::GstabdPath() + " --socket=" + dir.path() +
                           "/s.sock --state_dir=" + dir.path() + "/state --metrics_port=-1" +
                           " --listen=127.0.0.1:0";
  auto [rc, out] = testing::RunShell(base + " --tls_cert=" + tls.cert + " --tls_key=" + tls.key);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("requires mutual TLS"), std::string::npos) << out;
  EXPECT_NE(out.find("--tls_client_ca"), std::string::npos) << out;
  const std::string text = dir.path() + "/notes.txt";
  std::ofstream(text) << "not a certificate\n";
  std::tie(rc, out) = testing::RunShell(base + " --tls_cert=" + tls.cert + " --tls_key=" + tls.key +
                                        " --tls_client_ca=" + text);
  EXPECT_EQ(rc, 2);  // a file, but no certificate: the flag names the wrong file
  EXPECT_NE(out.find("notes.txt: not a readable PEM file (no PEM block in it)"), std::string::npos)
      << out;
  std::tie(rc, out) = testing::RunShell(base + " --tls_cert=" + tls.cert + " --tls_key=" + tls.key +
                                        " --tls_client_ca=/dev/null");
  EXPECT_EQ(rc, 1);  // empty: not written yet, perhaps
  EXPECT_NE(out.find("--tls_client_ca=/dev/null: not a readable PEM file (it is empty)"),
            std::string::npos)
      << out;
  std::tie(rc, out) = testing::RunShell(base + " --tls_cert=" + tls.cert + " --tls_key=" + tls.key +
                                        " --tls_client_ca=" + dir.path() + "/not-mounted-yet.pem");
  EXPECT_EQ(rc, 1);  // the machine's: a secret not mounted yet
  EXPECT_NE(out.find("not-mounted-yet.pem: not a readable PEM file (No such file or directory)"),
            std::string::npos)
      << out;
  // A key of another certificate (a Secret's files mixed up, or read in the middle of their
  // renewal) is refused at start, exit 1 (a service manager starts gstabd again); a certificate
  // file that holds none, exit 2 (the wrong file named). (`timeout`: should gstabd serve.)
  std::tie(rc, out) =
      testing::RunShell("timeout 30 " + base + " --tls_cert=" + tls.cert +
                        " --tls_key=" + dir.path() + "/ca.key --tls_client_ca=" + tls.ca);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("--tls_key is not the key of --tls_cert's certificate"), std::string::npos)
      << out;
  std::tie(rc, out) = testing::RunShell("timeout 30 " + base + " --tls_cert=" + tls.key +
                                        " --tls_key=" + tls.key + " --tls_client_ca=" + tls.ca);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--tls_cert holds no certificate"), std::string::npos) << out;
  // A certificate cut short (caught in the middle of a renewal written in place) is no bad
  // command line: exit 1, which a service manager restarts.
  std::string cert_text;
  {
    std::ifstream in(tls.cert);
    cert_text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const std::string half = dir.path() + "/half.pem";
  std::ofstream(half) << cert_text.substr(0, cert_text.size() / 2);
  std::tie(rc, out) = testing::RunShell("timeout 30 " + base + " --tls_cert=" + half +
                                        " --tls_key=" + tls.key + " --tls_client_ca=" + tls.ca);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("--tls_cert holds a certificate gstabd cannot read (cut short"),
            std::string::npos)
      << out;
  // A whole key that cannot be read (encrypted with a passphrase, in OpenSSL's traditional
  // form: its BEGIN line names no encryption) is no renewal under way: exit 2.
  ASSERT_EQ(testing::RunShell("openssl ec -in " + tls.key + " -aes128 -passout pass:x -out " +
                              dir.path() + "/encrypted.key")
                .first,
            0);
  std::tie(rc, out) =
      testing::RunShell("timeout 30 " + base + " --tls_cert=" + tls.cert +
                        " --tls_key=" + dir.path() + "/encrypted.key --tls_client_ca=" + tls.ca);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--tls_key holds no private key gstabd can read"), std::string::npos) << out;
  // A CA file that holds a key, not a certificate, is the wrong file: exit 2, at start (every
  // client's handshake would fail).
  std::tie(rc, out) = testing::RunShell("timeout 30 " + base + " --tls_cert=" + tls.cert +
                                        " --tls_key=" + tls.key + " --tls_client_ca=" + tls.key);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--tls_client_ca holds no certificate"), std::string::npos) << out;
  // Operators' certificates are --listen's.
  std::tie(rc, out) = testing::RunShell(testing::GstabdPath() + " --socket=" + dir.path() +
                                        "/s.sock --state_dir=" + dir.path() +
                                        "/state --metrics_port=-1 --tls_operators=ops");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--tls_operators names client certificates of gstabd's TCP port"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace gstab
