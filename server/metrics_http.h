// The /metrics endpoint: a civetweb HTTP server on its own port that answers GET and HEAD of
// /metrics with the registry's text exposition, and 405 to other methods.
//
//   auto http = MetricsHttpServer::Start(registry, 9478);   // port 0 picks a free one
//   auto local = MetricsHttpServer::Start(registry, 9478, "127.0.0.1");  // one IPv4 address
//   (*http)->port();
//
// Thread-safe; stops when destroyed.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/metrics.h"

struct mg_context;
struct mg_connection;

namespace gstab {

class MetricsHttpServer {
 public:
  // `address`: the IPv4 address to listen on; empty: every interface.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const MetricsRegistry* registry,
                                                                  int port,
                                                                  const std::string& address = "");
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  explicit MetricsHttpServer(const MetricsRegistry* registry) : registry_(registry) {}
  static int Handle(::mg_connection* conn, void* self);

  const MetricsRegistry* registry_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace gstab
