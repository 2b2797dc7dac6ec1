#include "common/host_port.h"

#include "gtest/gtest.h"

namespace gstab {
namespace {

std::string Split(absl::string_view address) {
  const std::optional<HostPort> at = SplitHostPort(address);
  return at.has_value() ? at->host + " " + at->port : "refused";
}

TEST(HostPortTest, NamesAndAddressesOfBothFamiliesWithTheirPort) {
  EXPECT_EQ(Split("node1:7479"), "node1 7479");
  EXPECT_EQ(Split("10.0.0.5:0"), "10.0.0.5 0");
  EXPECT_EQ(Split("[fd00::5]:7479"), "fd00::5 7479");
  EXPECT_EQ(Split("fd00::5:7479"), "fd00::5 7479");  // as $(POD_IP):7479 renders
  EXPECT_EQ(Split("::1:65535"), "::1 65535");
  EXPECT_EQ(Split("fe80::1%eth0:7479"), "fe80::1%eth0 7479");  // scoped to an interface
  EXPECT_EQ(JoinHostPort("fe80::1%eth0", "7479"), "[fe80::1%eth0]:7479");
  EXPECT_EQ(JoinHostPort("fd00::5", "7479"), "[fd00::5]:7479");
  EXPECT_EQ(JoinHostPort("node1", "7479"), "node1:7479");
}

TEST(HostPortTest, WhatIsNotAHostAndAPortIsRefused) {
  for (const char* bad : {"", "7479", ":7479", "node1:", "node1:x", "node1:65536",
                          "node1:99999999999", "[::1]", "[fd00::1]x:1", "[fd00::1:1", "::1",
                          "fd00::g:1", "[node1]:1", "no:de:1", "fe80::1%:1", "%eth0:1"}) {
    EXPECT_EQ(Split(bad), "refused") << bad;
  }
}

}  // namespace
}  // namespace gstab
