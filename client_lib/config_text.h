// Text forms of the wire messages for people and other languages: configuration settings as
// KEY=VALUE pairs (gstabctl config set, the C ABI, Python) and messages as JSON.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gstab/v1/config.pb.h"

namespace gstab {

// Sets `key` (a dotted field path of PolicyConfig such as "clip.max_norm", or "policy") from
// `value`. Enum values may be short ("clip" for POLICY_CLIP, "stable-spam" for
// STABILIZE_PRESET_STABLE_SPAM). INVALID_ARGUMENT names the key and what is wrong with it.
absl::Status SetConfigField(const std::string& key, const std::string& value,
                            v1::PolicyConfig* config);

// KEY=VALUE settings separated by spaces, tabs, newlines or commas, applied in order:
// "policy=zclip zclip.z_threshold=3". Empty text gives an empty config (the daemon's defaults).
absl::StatusOr<v1::PolicyConfig> ParseConfigSettings(absl::string_view settings);

// Every field set in `config` as KEY=VALUE lines, which ParseConfigSettings reads back (enum
// values by their full names, numbers exactly).
std::string ConfigSettingsText(const v1::PolicyConfig& config);

// A message as one line of JSON (proto3's JSON mapping, with the .proto's field names).
// with_defaults: also the fields that hold their default (zero) value.
std::string ToJson(const google::protobuf::Message& message, bool with_defaults = false);

}  // namespace gstab
