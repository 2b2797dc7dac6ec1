// The rendezvous store as node 0's gstabd serves it (gstab.v1.Rendezvous), on loopback, in the
// test's process: for the node collective's tests (real Gloo, through a real store).
#pragma once

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/rendezvous_store.h"

namespace gstab::testing {

// The rendezvous store as node 0's gstabd serves it (gstab.v1.Rendezvous), on loopback.
class LoopbackStore {
 public:
  LoopbackStore() : service_(&store_) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~LoopbackStore() {
    store_.Close();
    server_->Shutdown();
  }
  // A rendezvous of `nodes` nodes in it.
  v1::RendezvousInfo Rendezvous(uint32_t nodes) {
    v1::RendezvousInfo info;
    info.set_format_version(1);
    info.set_store_address(absl::StrCat("127.0.0.1:", port_));
    info.set_token(store_.NewToken());
    info.set_node_count(nodes);
    return info;
  }
  // Whether `key` is set in the rendezvous of `info` within 10 s.
  bool WaitFor(const v1::RendezvousInfo& info, const std::string& key) {
    return store_.Wait(info.token(), {key}, absl::Seconds(10)).ok();
  }

 private:
  RendezvousStore store_;
  RendezvousService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace gstab::testing
