#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <civetweb.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace gstab {
namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Handler threads: a scrape holds one for as long as its client is slow, and an idle connection
// (a port scanner, a stuck probe) for up to kRequestTimeoutMs, civetweb's limit on each read
// and write (a scraper sends its request at once and reads the answer as it comes). Past
// kThreads such connections at once, a scrape waits for one of them to time out.
constexpr char kThreads[] = "32";
constexpr char kRequestTimeoutMs[] = "2000";
// civetweb's build-time feature bit for IPv6 (mg_check_feature).
constexpr unsigned kIpv6Feature = 8;

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const MetricsRegistry* registry, int port, const std::string& address) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics port ", port, " is out of range"));
  }
  in_addr parsed;
  if (!address.empty() && inet_pton(AF_INET, address.c_str(), &parsed) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address,
                     "' is not an IPv4 address (this gstabd's HTTP server has no IPv6)"));
  }
  mg_init_library(0);
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer(registry));
  // Port 0: civetweb binds a free port, read back below. "+": IPv4 and IPv6 where civetweb was
  // built with IPv6 (Debian 12's is not: IPv4 only).
  const std::string ports = address.empty()
                                ? absl::StrCat(mg_check_feature(kIpv6Feature) != 0 ? "+" : "", port)
                                : absl::StrCat(address, ":", port);
  const char* options[] = {"listening_ports",    ports.c_str(),     "num_threads", kThreads,
                           "request_timeout_ms", kRequestTimeoutMs, nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof callbacks);
  server->ctx_ = mg_start(&callbacks, nullptr, options);
  if (server->ctx_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address.empty() ? "port " : address + ":", port,
                     " (in use, or not an address of this machine?): pick a free port, "
                     "--metrics_port=0 for any, -1 for none"));
  }
  mg_server_port bound[2];
  if (mg_get_server_ports(server->ctx_, 2, bound) < 1 || bound[0].port <= 0) {
    return absl::InternalError("the metrics server listens on no port");
  }
  port = bound[0].port;
  mg_set_request_handler(server->ctx_, "/metrics$", &MetricsHttpServer::Handle, server.get());
  server->port_ = port;
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int MetricsHttpServer::Handle(::mg_connection* conn, void* self) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string method = info->request_method;
  // A scrape sends no body. civetweb reads whatever body a handled request announces before it
  // closes the connection, each read waiting up to kRequestTimeoutMs: a body trickled a byte at
  // a time would hold a handler thread for good, and kThreads of them every scrape. An error
  // answer (mg_send_http_error) closes the connection without reading it.
  if (info->content_length > 0 || mg_get_header(conn, "Transfer-Encoding") != nullptr) {
    mg_send_http_error(conn, 413, "a scrape of /metrics sends no request body");
    return 413;
  }
  if (method != "GET" && method != "HEAD") {
    mg_printf(conn,
              "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n");
    return 405;
  }
  const std::string body = static_cast<MetricsHttpServer*>(self)->registry_->Render();
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            kContentType, body.size());
  if (method == "GET") mg_write(conn, body.data(), body.size());
  return 200;
}

}  // namespace gstab
