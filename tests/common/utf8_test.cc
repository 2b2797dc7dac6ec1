// UTF-8 checks: the sequences protobuf refuses in a string field are refused here too, and the
// field a message holds one in is named.
#include "common/utf8.h"

#include "gstab/v1/stabilizer.pb.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(Utf8Test, WellFormedSequencesPassAndMalformedOnesDoNot) {
  for (const char* good : {"", "job-1.a_b", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                           "\xf4\x8f\xbf\xbf" /* U+10FFFF */, "\xed\x9f\xbf" /* U+D7FF */}) {
    EXPECT_TRUE(IsValidUtf8(good)) << good;
  }
  for (const char* bad : {"\xff", "j\xff", "\x80", "\xc3", "\xc0\x80" /* overlong NUL */,
                          "\xe0\x80\x80" /* overlong */, "\xed\xa0\x80" /* surrogate */,
                          "\xf4\x90\x80\x80" /* above U+10FFFF */, "\xe2\x82", "\xf0\x9f\x98",
                          "\xc3\x28", "\xf5\x80\x80\x80"}) {
    EXPECT_FALSE(IsValidUtf8(bad)) << ::testing::PrintToString(std::string(bad));
  }
}

TEST(Utf8Test, TheFirstFieldThatIsNotUtf8IsNamedWithItsPath) {
  v1::RegisterBuffersRequest request;
  request.set_session("s");
  request.add_tensors()->set_name("w");
  request.add_tensors()->set_name("v");
  EXPECT_EQ(FirstNonUtf8Field(request), std::nullopt);
  request.mutable_tensors(1)->set_group("g\xff");
  EXPECT_EQ(FirstNonUtf8Field(request), "tensors[1].group");
  v1::AttachRequest attach;
  attach.set_job("j\xc0\x80");
  attach.set_rendezvous("\xff\xfe");  // bytes, not text: any bytes are fine
  EXPECT_EQ(FirstNonUtf8Field(attach), "job");
}

}  // namespace
}  // namespace gstab
