// Jobs by uid (gstabd --jobs_by_uid, the default): a job belongs to the uid of the worker that
// made it. The example trainer, run as other users through setpriv, finds another uid's job
// refused by name, through gstabd's restart too; root and the job's own uid are not refused, and
// --jobs_by_uid=false lets every uid the socket admits use every job. Through gstabd's TCP port,
// a job belongs to the name (SPIFFE ID, common name, DNS name or email address) of the client
// certificate that made it (connection caps: e2e_owner_connections_test.cc).
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/owner_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_tls.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::kRefused;
using testing::OwnerTest;
using testing::TestTls;

TEST_F(OwnerTest, AnotherUidsJobIsRefusedByNameAndItsOwnGoesOn) {
  SKIP_UNLESS_ROOT();
  auto [rc, out] = Train(65534, "theirs");
  ASSERT_EQ(rc, 0) << out;
  std::tie(rc, out) = Train(65533, "theirs");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  EXPECT_NE(out.find("runs as uid 65533"), std::string::npos) << out;
  // Nor may it act as an observer (gstabctl config set attaches as one), or forget the job.
  std::tie(rc, out) = Ctl(65533, "config set --job=theirs policy=monitor");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  std::tie(rc, out) = Ctl(65533, "forget --job=theirs");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  // Its own job steps; the refusals left the other as it was.
  std::tie(rc, out) = Train(65533, "mine");
  EXPECT_EQ(rc, 0) << out;

  // Root (an operator's gstabctl) is not refused, and sees whose each job is.
  auto root = Client::Connect(daemon_->socket());
  ASSERT_TRUE(root.ok()) << root.status();
  grpc::ClientContext ctx;
  v1::ListJobsResponse listed;
  ASSERT_TRUE((*root)->stub()->ListJobs(&ctx, {}, &listed).ok());
  std::map<std::string, uint32_t> owners;
  for (const v1::JobSummary& j : listed.jobs()) {
    if (j.has_owner_uid()) owners[j.job()] = j.owner_uid();
  }
  EXPECT_EQ(owners, (std::map<std::string, uint32_t>{{"mine", 65533}, {"theirs", 65534}}));
  AttachOptions observer = testing::JobOptions("theirs");
  observer.observer = true;
  ASSERT_TRUE((*root)->Attach(observer).ok());
  // With a session attached, another uid's forget is refused as not its own, not told to stop
  // the job's workers.
  std::tie(rc, out) = Ctl(65533, "forget --job=theirs");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  EXPECT_EQ(out.find("session(s) attached"), std::string::npos) << out;
  absl::StatusOr<v1::GetStatsResponse> stats = (*root)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->last_step(), 3u) << "a refused attach changed the job";
  ASSERT_TRUE((*root)->Detach().ok());
  root->reset();

  // The owner is in the checkpoint: after a restart the job is still theirs, held or not.
  Restart({});
  std::tie(rc, out) = Train(65533, "theirs");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  std::tie(rc, out) = Ctl(65533, "forget --job=theirs");  // a checkpoint only, now
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kRefused), std::string::npos) << out;
  // gstabctl status --all lists it as retired, with its owner, and says whom gstabd took the
  // caller for.
  std::tie(rc, out) = Ctl(65533, "status --all");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("caller: uid 65533, which acts on its own jobs only"), std::string::npos)
      << out;
  const size_t retired = out.find("kept as checkpoints (");
  ASSERT_NE(retired, std::string::npos) << out;
  const size_t row = out.find("theirs", retired);
  ASSERT_NE(row, std::string::npos) << out;
  EXPECT_NE(out.substr(row, out.find('\n', row) - row).find("65534"), std::string::npos) << out;

  // Without jobs by uid, the attach goes through (and the trainer's step 1 is then refused as
  // one the job has passed, which is the job's own answer).
  Restart({"--jobs_by_uid=false"});
  std::tie(rc, out) = Train(65533, "theirs");
  EXPECT_NE(rc, 0) << out;
  EXPECT_EQ(out.find(kRefused), std::string::npos) << out;
  EXPECT_NE(out.find("is not after its last step"), std::string::npos) << out;
}

// A client through gstabd's TCP port, with `who`'s certificate.
std::unique_ptr<Client> ConnectAs(const TestTls& who, const std::string& address) {
  testing::TlsEnvironment env(who);
  auto c = Client::Connect(address, absl::Seconds(5));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// Attaches to `job` (as an observer, or as a worker, which makes a job) and detaches.
absl::Status AttachThenDetach(Client* client, const std::string& job, bool observer = true) {
  AttachOptions options = testing::JobOptions(job);
  options.observer = observer;
  if (absl::Status s = client->Attach(options); !s.ok()) return s;
  return client->Detach();
}

// A certificate with no name may act on no job.
void ExpectNameless(const absl::Status& refused) {
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find("this client's certificate has no name: no SPIFFE ID"),
            std::string::npos)
      << refused;
}

grpc::Status Forget(Client* client, const std::string& job) {
  grpc::ClientContext ctx;
  v1::ForgetJobRequest request;
  request.set_job(job);
  v1::ForgetJobResponse response;
  return client->stub()->ForgetJob(&ctx, request, &response);
}

TEST_F(OwnerTest, AJobMadeThroughTheTcpPortIsItsCertificates) {
  SKIP_UNLESS_ROOT();
  const TestTls tls = testing::MakeTestTls(dir_.path());
  const TestTls alice = testing::MakeClientCertificate(dir_.path(), "alice", "/CN=alice");
  const TestTls bob = testing::MakeClientCertificate(dir_.path(), "bob", "/CN=bob");
  const TestTls ops = testing::MakeClientCertificate(dir_.path(), "ops", "/CN=gstab-ops");
  const TestTls nameless =
      testing::MakeClientCertificate(dir_.path(), "nameless", "/O=gstab", "IP:192.0.2.7");
  std::vector<std::string> flags = testing::ListenFlags(tls);
  flags.push_back("--tls_operators=gstab-ops");
  Restart(flags);
  std::string address = testing::ListenAddress(*daemon_, 1);
  ASSERT_FALSE(address.empty());

  // A uid's job, and its state for alice's (over TCP no host shared memory is registered, so
  // alice's job gets its statistics by an import).
  auto [rc, out] = Train(65534, "theirs");
  ASSERT_EQ(rc, 0) << out;
  auto root = Client::Connect(daemon_->socket());
  ASSERT_TRUE(root.ok()) << root.status();
  AttachOptions observer = testing::JobOptions("theirs");
  observer.observer = true;
  ASSERT_TRUE((*root)->Attach(observer).ok());
  absl::StatusOr<std::string> state = (*root)->ExportState();
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_TRUE((*root)->Detach().ok());
  std::unique_ptr<Client> a = ConnectAs(alice, address);
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->Attach(testing::JobOptions("alices")).ok());
  ASSERT_TRUE(a->ImportState(*state).ok());
  ASSERT_TRUE(a->Detach().ok());

  // Another certificate, and another uid through the socket, are refused it.
  const std::string kAlices = "belongs to certificate 'alice'";
  std::unique_ptr<Client> b = ConnectAs(bob, address);
  ASSERT_NE(b, nullptr);
  absl::Status refused = AttachThenDetach(b.get(), "alices");
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find(kAlices), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("this client's certificate is named 'bob'"), std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("with certificate 'alice'"), std::string::npos) << refused;
  grpc::Status forget = Forget(b.get(), "alices");
  EXPECT_EQ(forget.error_code(), grpc::StatusCode::PERMISSION_DENIED) << forget.error_message();
  EXPECT_NE(forget.error_message().find(kAlices), std::string::npos) << forget.error_message();
  refused = b->Attach(testing::JobOptions("alices"));  // as a worker
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  // Nor may bob make a rendezvous for it (which would push out alice's); alice gets past the
  // owner check to this gstabd's lack of a peer port.
  absl::StatusOr<std::string> blob = b->CreateRendezvous("alices", 2);
  EXPECT_EQ(blob.status().code(), absl::StatusCode::kPermissionDenied) << blob.status();
  blob = a->CreateRendezvous("alices", 2);
  EXPECT_NE(blob.status().message().find("--peer_listen"), std::string::npos) << blob.status();
  std::tie(rc, out) = Ctl(65533, "config set --job=alices policy=monitor");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find(kAlices), std::string::npos) << out;
  // Nor may alice act on the uid's job; her own she may.
  refused = AttachThenDetach(a.get(), "theirs");
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find(kRefused), std::string::npos) << refused;
  EXPECT_TRUE(AttachThenDetach(a.get(), "alices").ok());
  // A certificate without a name (an IP address names nothing) owns nothing, so it may act on
  // nothing.
  std::unique_ptr<Client> n = ConnectAs(nameless, address);
  ASSERT_NE(n, nullptr);
  ExpectNameless(n->Attach(testing::JobOptions("anything")));
  grpc::ClientContext listing;
  v1::ListJobsResponse seen;
  ASSERT_TRUE(n->stub()->ListJobs(&listing, {}, &seen).ok());
  EXPECT_EQ(seen.caller(), "a certificate without a name");
  EXPECT_EQ(seen.caller_scope(), v1::CALLER_SCOPE_NO_JOB);

  // An operator's certificate acts on both, and sees whose each is.
  std::unique_ptr<Client> o = ConnectAs(ops, address);
  ASSERT_NE(o, nullptr);
  EXPECT_TRUE(AttachThenDetach(o.get(), "theirs").ok());
  EXPECT_TRUE(AttachThenDetach(o.get(), "alices").ok());
  grpc::ClientContext ctx;
  v1::ListJobsResponse listed;
  ASSERT_TRUE(o->stub()->ListJobs(&ctx, {}, &listed).ok());
  std::map<std::string, std::string> owners;
  for (const v1::JobSummary& j : listed.jobs()) {
    owners[j.job()] = j.has_owner_certificate() ? "cert " + j.owner_certificate()
                                                : "uid " + std::to_string(j.owner_uid());
  }
  EXPECT_EQ(owners, (std::map<std::string, std::string>{{"alices", "cert alice"},
                                                        {"theirs", "uid 65534"}}));

  // The certificate is in the checkpoint: after a restart, bob is still refused the job, now a
  // checkpoint only, which gstabctl lists as alice's; alice may forget it.
  a.reset();
  b.reset();
  n.reset();
  o.reset();
  Restart(flags);
  address = testing::ListenAddress(*daemon_, 2);
  ASSERT_FALSE(address.empty());
  b = ConnectAs(bob, address);
  ASSERT_NE(b, nullptr);
  refused = b->Attach(testing::JobOptions("alices"));  // restored from its checkpoint, then refused
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find(kAlices), std::string::npos) << refused;
  forget = Forget(b.get(), "alices");
  EXPECT_EQ(forget.error_code(), grpc::StatusCode::PERMISSION_DENIED) << forget.error_message();
  std::tie(rc, out) = Ctl(65533, "status --all");
  EXPECT_EQ(rc, 0) << out;
  const size_t row = out.find("alices", out.find("kept as checkpoints ("));
  ASSERT_NE(row, std::string::npos) << out;
  EXPECT_NE(out.substr(row, out.find('\n', row) - row).find("cert:alice"), std::string::npos)
      << out;
  a = ConnectAs(alice, address);
  ASSERT_NE(a, nullptr);
  forget = Forget(a.get(), "alices");
  EXPECT_TRUE(forget.ok()) << forget.error_message();

  // Without jobs by uid, any certificate acts on any job, one without a name too.
  a.reset();
  b.reset();
  flags.push_back("--jobs_by_uid=false");
  Restart(flags);
  address = testing::ListenAddress(*daemon_, 3);
  ASSERT_FALSE(address.empty());
  b = ConnectAs(bob, address);
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(b->Attach(testing::JobOptions("theirs")).ok());
  n = ConnectAs(nameless, address);
  ASSERT_NE(n, nullptr);
  EXPECT_TRUE(n->Attach(testing::JobOptions("anything")).ok());
}

// Whom gstabd takes a certificate for (ListJobsResponse.caller): the first of its SPIFFE ID,
// common name, first DNS name and first email address; a common name that looks like a SPIFFE
// ID, or only an IP address, names nothing. A DNS name owns the jobs it makes like any name.
TEST_F(OwnerTest, ACertificateIsNamedBySpiffeIdThenCommonNameThenDnsNameThenEmail) {
  const TestTls tls = testing::MakeTestTls(dir_.path());
  Restart(testing::ListenFlags(tls));
  const std::string address = testing::ListenAddress(*daemon_, 1);
  ASSERT_FALSE(address.empty());
  const std::vector<std::tuple<std::string, std::string, std::string>> certificates = {
      {"/O=gstab", "URI:spiffe://gstab.test/team-a", "certificate 'spiffe://gstab.test/team-a'"},
      {"/CN=carol", "URI:spiffe://gstab.test/team-b,DNS:carol.ml.svc",
       "certificate 'spiffe://gstab.test/team-b'"},
      {"/CN=dave", "DNS:dave.ml.svc,email:dave@gstab.test", "certificate 'dave'"},
      {"/O=gstab", "email:erin@gstab.test,DNS:trainer.ml.svc,DNS:trainer",
       "certificate 'dns:trainer.ml.svc'"},
      {"/O=gstab", "IP:192.0.2.7,email:erin@gstab.test", "certificate 'email:erin@gstab.test'"},
      {"'/CN=spiffe:\\/\\/gstab.test\\/team-a'", "DNS:impostor.ml.svc",
       "a certificate without a name"},
      // A name of one kind does not pass for another's: a DNS name or an email address that
      // reads as a common name or a SPIFFE ID, a common name that reads as a DNS name.
      {"/O=gstab", "DNS:dave", "certificate 'dns:dave'"},
      {"/O=gstab", "email:spiffe://gstab.test/team-a",
       "certificate 'email:spiffe://gstab.test/team-a'"},
      {"/CN=dns:trainer.ml.svc", "", "a certificate without a name"},
      {"/O=gstab", "IP:192.0.2.7", "a certificate without a name"},
  };
  int n = 0;
  for (const auto& [subject, san, caller] : certificates) {
    SCOPED_TRACE(subject + " " + san);
    const TestTls cert =
        testing::MakeClientCertificate(dir_.path(), "c" + std::to_string(n++), subject, san);
    std::unique_ptr<Client> c = ConnectAs(cert, address);
    ASSERT_NE(c, nullptr);
    grpc::ClientContext ctx;
    v1::ListJobsResponse listed;
    ASSERT_TRUE(c->stub()->ListJobs(&ctx, {}, &listed).ok());
    EXPECT_EQ(listed.caller(), caller);
  }
  // trainer.ml.svc's job is its own: another DNS name of the same certificate is not it.
  std::unique_ptr<Client> t = ConnectAs(
      testing::MakeClientCertificate(dir_.path(), "t", "/O=gstab", "DNS:trainer.ml.svc"), address);
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(AttachThenDetach(t.get(), "trainers", /*observer=*/false).ok());
  std::unique_ptr<Client> u = ConnectAs(
      testing::MakeClientCertificate(dir_.path(), "u", "/O=gstab", "DNS:trainer"), address);
  ASSERT_NE(u, nullptr);
  const absl::Status refused = AttachThenDetach(u.get(), "trainers");
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find("belongs to certificate 'dns:trainer.ml.svc'"),
            std::string::npos)
      << refused;
}

}  // namespace
}  // namespace gstab
