#include "server/memory_claims.h"

#include <string>

#include "gtest/gtest.h"

namespace gstab {
namespace {

std::string Name(size_t i) { return "tensor " + std::to_string(i); }

// Another job's memory is refused wherever it overlaps, by however little; memory beside it, the
// same job's (its ranks, a registration replacing another) and memory let go of are taken.
TEST(MemoryClaimsTest, AnotherJobsMemoryIsRefusedWhereverItOverlaps) {
  MemoryClaims claims;
  auto a = claims.Claim("a", {{1000, 2000}, {5000, 9000}}, Name);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(claims.Claim("b", {{2000, 3000}, {0, 1000}, {9000, 9001}}, Name).ok());  // beside
  for (MemoryClaims::Extent e :
       {MemoryClaims::Extent{1999, 2000}, {0, 1001}, {6000, 6001}, {4000, 10000}, {500, 600000}}) {
    auto b = claims.Claim("b", {{100000, 100001}, e}, Name);
    ASSERT_FALSE(b.ok()) << e.begin << ".." << e.end;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(b.status().message(),
              "tensor 1 is memory job 'a' registered: a job's gradients are its own (both jobs "
              "would scale them); give job 'b' memory of its own");
  }
  auto again = claims.Claim("a", {{1000, 2000}, {1500, 1600}}, Name);  // its own
  ASSERT_TRUE(again.ok());
  a->reset();
  EXPECT_FALSE(claims.Claim("b", {{1000, 1001}}, Name).ok());  // still held, by `again`
  EXPECT_TRUE(claims.Claim("b", {{5000, 9000}}, Name).ok());   // let go of with `a`
  again->reset();
  EXPECT_TRUE(claims.Claim("b", {{1000, 2000}}, Name).ok());
}

// A claim may outlive the claims it came from (a registration held past gstabd's teardown).
TEST(MemoryClaimsTest, AClaimMayOutliveItsRegistry) {
  std::shared_ptr<void> claim;
  {
    MemoryClaims claims;
    claim = *claims.Claim("a", {{1, 2}}, Name);
  }
  claim.reset();
}

}  // namespace
}  // namespace gstab
