#include "server/metrics.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <clocale>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "server/metrics_http.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

// The exact bytes of the exposition for a fixed state: families sorted by name, HELP and TYPE
// first, escaped HELP and label values, cumulative histogram buckets ending in +Inf == _count,
// shortest round-trip numbers, NaN/Inf spelled as Prometheus expects.
TEST(MetricsTest, ExpositionMatchesGoldenBytes) {
  MetricsRegistry r;
  MetricFamily* steps = r.AddCounter("gstab_steps_total", "Steps.\nSecond line \\ end.", {"job"});
  steps->Add({"b"}, 2);
  steps->Add({"a \"quoted\"\n"}, 1);
  MetricFamily* norm = r.AddGauge("gstab_norm", "Norm.", {"job", "group"});
  norm->Set({"a", "g1"}, 0.1);
  norm->Set({"a", "g0"}, NAN);
  norm->Set({"b", "g0"}, INFINITY);
  MetricFamily* h = r.AddHistogram("gstab_hist", "Hist.", {"job"}, {0.5, 1, 2.5});
  for (double v : {0.25, 0.75, 0.75, 2.0, 100.0, double{NAN}, double{INFINITY}}) {
    h->Observe({"a"}, v);
  }
  r.AddGauge("gstab_build_info", "Build.", {"version"})->Set({"1.0"}, 1);

  EXPECT_EQ(r.Render(),
            "# HELP gstab_build_info Build.\n"
            "# TYPE gstab_build_info gauge\n"
            "gstab_build_info{version=\"1.0\"} 1\n"
            "# HELP gstab_hist Hist.\n"
            "# TYPE gstab_hist histogram\n"
            "gstab_hist_bucket{job=\"a\",le=\"0.5\"} 1\n"
            "gstab_hist_bucket{job=\"a\",le=\"1\"} 3\n"
            "gstab_hist_bucket{job=\"a\",le=\"2.5\"} 4\n"
            "gstab_hist_bucket{job=\"a\",le=\"+Inf\"} 5\n"
            "gstab_hist_sum{job=\"a\"} 103.75\n"
            "gstab_hist_count{job=\"a\"} 5\n"
            "# HELP gstab_norm Norm.\n"
            "# TYPE gstab_norm gauge\n"
            "gstab_norm{job=\"a\",group=\"g0\"} NaN\n"
            "gstab_norm{job=\"a\",group=\"g1\"} 0.1\n"
            "gstab_norm{job=\"b\",group=\"g0\"} +Inf\n"
            "# HELP gstab_steps_total Steps.\\nSecond line \\\\ end.\n"
            "# TYPE gstab_steps_total counter\n"
            "gstab_steps_total{job=\"a \\\"quoted\\\"\\n\"} 1\n"
            "gstab_steps_total{job=\"b\"} 2\n");
}

// Under a locale with a decimal comma (de_DE, compiled by localedef into a temporary directory:
// no root needed, only the sources of Debian's `locales` package), numbers keep their point.
TEST(MetricsTest, NumbersIgnoreTheProcessLocale) {
  testing::TempDir dir;
  const std::string built = dir.path() + "/de_DE.UTF-8";
  const std::string command = "localedef -c -i de_DE -f UTF-8 " + built + " >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0 || !std::filesystem::exists(built + "/LC_NUMERIC")) {
    GTEST_SKIP() << "localedef could not build de_DE.UTF-8 (Debian's locales package, which "
                    "scripts/setup installs, has its sources)";
  }
  const char* previous = std::setlocale(LC_ALL, nullptr);
  const std::string saved = previous == nullptr ? "C" : previous;
  setenv("LOCPATH", dir.path().c_str(), 1);
  ASSERT_NE(std::setlocale(LC_ALL, "de_DE.UTF-8"), nullptr);
  ASSERT_STREQ(std::localeconv()->decimal_point, ",");  // the locale is in force
  EXPECT_EQ(FormatMetricValue(1.5), "1.5");
  EXPECT_EQ(FormatMetricValue(1e-300), "1e-300");
  EXPECT_EQ(FormatMetricValue(-INFINITY), "-Inf");
  MetricsRegistry r;
  r.AddGauge("gstab_norm", "Norm.", {"job"})->Set({"a"}, 2.25);
  r.AddHistogram("gstab_h", "H.", {"job"}, {0.5})->Observe({"a"}, 0.25);
  const std::string text = r.Render();
  std::setlocale(LC_ALL, saved.c_str());
  unsetenv("LOCPATH");
  EXPECT_NE(text.find("gstab_norm{job=\"a\"} 2.25\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_h_bucket{job=\"a\",le=\"0.5\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_h_sum{job=\"a\"} 0.25\n"), std::string::npos) << text;
  // The only commas separate the buckets' two labels.
  EXPECT_EQ(std::count(text.begin(), text.end(), ','), 2) << text;
}

TEST(MetricsTest, BucketsAreRoundAndRemovalForgetsAJob) {
  EXPECT_EQ(ExponentialBuckets(1e-6, 10, 3), (std::vector<double>{1e-6, 1e-5, 1e-4}));
  MetricsRegistry r;
  MetricFamily* g = r.AddGauge("gstab_x", "X.", {"job", "group"});
  g->Set({"a", "1"}, 1);
  g->Set({"a", "2"}, 2);
  g->Set({"b", "1"}, 3);
  g->Set({"ab", "1"}, 4);  // names that sort next to "a"'s series stay
  g->Set({"", "1"}, 5);
  g->Set({"a", ""}, 6);
  g->RemoveByFirstLabel("a");
  EXPECT_EQ(r.Render(),
            "# HELP gstab_x X.\n# TYPE gstab_x gauge\ngstab_x{job=\"\",group=\"1\"} 5\n"
            "gstab_x{job=\"ab\",group=\"1\"} 4\ngstab_x{job=\"b\",group=\"1\"} 3\n");
}

// Each series keeps its own labels and buckets in the text, also after others around it went
// and came back (a scrape copies the family flat, then formats it).
TEST(MetricsTest, SeriesKeepTheirOwnLabelsAndBucketsAsOthersComeAndGo) {
  MetricsRegistry r;
  MetricFamily* h = r.AddHistogram("gstab_h", "H.", {"job"}, {1, 2});
  h->Observe({"a"}, 0.5);
  h->Observe({"b"}, 1.5);
  h->Observe({"c"}, 1.5);
  h->Remove({"b"});
  h->Observe({"c"}, 5);
  h->Observe({"b"}, 0.5);
  EXPECT_EQ(r.Render(),
            "# HELP gstab_h H.\n# TYPE gstab_h histogram\n"
            "gstab_h_bucket{job=\"a\",le=\"1\"} 1\ngstab_h_bucket{job=\"a\",le=\"2\"} 1\n"
            "gstab_h_bucket{job=\"a\",le=\"+Inf\"} 1\ngstab_h_sum{job=\"a\"} 0.5\n"
            "gstab_h_count{job=\"a\"} 1\n"
            "gstab_h_bucket{job=\"b\",le=\"1\"} 1\ngstab_h_bucket{job=\"b\",le=\"2\"} 1\n"
            "gstab_h_bucket{job=\"b\",le=\"+Inf\"} 1\ngstab_h_sum{job=\"b\"} 0.5\n"
            "gstab_h_count{job=\"b\"} 1\n"
            "gstab_h_bucket{job=\"c\",le=\"1\"} 0\ngstab_h_bucket{job=\"c\",le=\"2\"} 1\n"
            "gstab_h_bucket{job=\"c\",le=\"+Inf\"} 2\ngstab_h_sum{job=\"c\"} 6.5\n"
            "gstab_h_count{job=\"c\"} 2\n");
}

// --metrics_address: the endpoint listens on that address alone (127.0.0.1: this machine), and
// an address that is not IPv4 is refused saying so.
TEST(MetricsHttpTest, AnAddressNarrowsWhereMetricsAreServed) {
  MetricsRegistry registry;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> local =
      MetricsHttpServer::Start(&registry, 0, "127.0.0.1");
  ASSERT_TRUE(local.ok()) << local.status();
  absl::StatusOr<testing::HttpResponse> scraped =
      testing::HttpRequest((*local)->port(), "GET", "/metrics");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  auto [rc, listening] = testing::RunShell("ss -Hltn");
  ASSERT_EQ(rc, 0) << listening;
  const std::string port = ":" + std::to_string((*local)->port()) + " ";
  EXPECT_NE(listening.find("127.0.0.1" + port), std::string::npos) << listening;
  EXPECT_EQ(listening.find("0.0.0.0" + port), std::string::npos) << listening;
  for (const char* bad : {"::1", "localhost", "127.0.0.1:80"}) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> refused =
        MetricsHttpServer::Start(&registry, 0, bad);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(refused.status().message().find("is not an IPv4 address"), std::string::npos)
        << refused.status();
  }
}

// A request that announces a body is answered 413 and its connection closed, the body unread: a
// body sent a byte at a time (each within civetweb's read timeout) held a handler thread for
// good before, and 32 such connections every scrape. Other requests are served as before.
TEST(MetricsHttpTest, ARequestWithABodyIsAnsweredWithoutReadingIt) {
  MetricsRegistry registry;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start(&registry, 0, "127.0.0.1");
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* head : {"POST /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                           "GET /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                           "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>((*server)->port()));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
    ASSERT_EQ(send(fd, head, strlen(head), MSG_NOSIGNAL), static_cast<ssize_t>(strlen(head)));
    // The body trickles, a byte every 0.5 s (civetweb waits 2 s for each read), for up to 8 s.
    std::string answer;
    bool closed = false;
    for (int i = 0; i < 16 && !closed; ++i) {
      (void)send(fd, "1", 1, MSG_NOSIGNAL);
      pollfd in = {fd, POLLIN, 0};
      while (!closed && poll(&in, 1, 500) > 0) {
        char buf[4096];
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
          closed = true;
        } else {
          answer.append(buf, static_cast<size_t>(n));
        }
      }
    }
    close(fd);
    EXPECT_TRUE(closed) << head << ": still open after 8 s of a trickled body";
    EXPECT_NE(answer.find(" 413 "), std::string::npos) << head << answer;
    EXPECT_NE(answer.find("sends no request body"), std::string::npos) << head << answer;
  }
  absl::StatusOr<testing::HttpResponse> scraped =
      testing::HttpRequest((*server)->port(), "GET", "/metrics");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  EXPECT_EQ(scraped->status, 200);
}

}  // namespace
}  // namespace gstab
