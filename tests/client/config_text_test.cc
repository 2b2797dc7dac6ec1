// The KEY=VALUE text of a configuration, as gstabctl and the C ABI take it: keys, values, enum
// short names, what is refused, and the text `config show` prints read back as it was.
#include "client_lib/config_text.h"

#include <string>

#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(ConfigTextTest, DottedKeysSetTheirFields) {
  absl::StatusOr<v1::PolicyConfig> c = ParseConfigSettings(
      "policy=clip clip.max_norm=0.25,stabilize.beta1=1e-1\tspike.warmup_steps=7 "
      "stabilize.bias_correction=false stabilize.preset=stable-spam");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->policy(), v1::POLICY_CLIP);
  EXPECT_EQ(c->clip().max_norm(), 0.25);
  EXPECT_EQ(c->stabilize().beta1(), 0.1);
  EXPECT_EQ(c->spike().warmup_steps(), 7u);
  EXPECT_FALSE(c->stabilize().bias_correction());
  EXPECT_EQ(c->stabilize().preset(), v1::STABILIZE_PRESET_STABLE_SPAM);
}

TEST(ConfigTextTest, WhatCannotBeReadIsRefusedNamingTheKey) {
  struct Case {
    const char* text;
    const char* says;
  };
  for (const Case& c : {
           Case{"clip.max_norm=0x10", "config key 'clip.max_norm' cannot take the value '0x10'"},
           Case{"clip.max_norm=1p3", "cannot take the value '1p3'"},
           Case{"clip.max_norm=half", "cannot take the value 'half'"},
           Case{"spike.warmup_steps=-1", "'spike.warmup_steps' cannot take the value '-1'"},
           Case{"spike.warmup_steps=0x10", "cannot take the value '0x10'"},
           Case{"clip.max_normal=1", "unknown config key 'clip.max_normal'"},
           Case{"clip=1", "'clip' is a section, not a value"},
           Case{"clip.max_norm", "'clip.max_norm' is not KEY=VALUE"},
           Case{"policy=sgd", "it takes POLICY_"},
           Case{"policy=unspecified", "cannot take the value 'unspecified'"},
           Case{"policy=clip\xff", "config settings 'policy=clip\\xff' are not UTF-8 text"},
       }) {
    absl::StatusOr<v1::PolicyConfig> parsed = ParseConfigSettings(c.text);
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_NE(parsed.status().message().find(c.says), absl::string_view::npos)
        << c.text << ": " << parsed.status();
  }
}

TEST(ConfigTextTest, TheTextPrintedReadsBackAsTheSameConfiguration) {
  v1::PolicyConfig config;
  config.set_policy(v1::POLICY_STABILIZE);
  config.mutable_stabilize()->set_beta1(0.123456789012345);
  config.mutable_stabilize()->set_beta2(0.999);
  config.mutable_clip()->set_max_norm(1e-8);
  config.mutable_divergence()->set_recovery_steps(50);
  absl::StatusOr<v1::PolicyConfig> back = ParseConfigSettings(ConfigSettingsText(config));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), config.SerializeAsString()) << ConfigSettingsText(config);
}

}  // namespace
}  // namespace gstab
