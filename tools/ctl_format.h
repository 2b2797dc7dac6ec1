// Rendering for gstabctl: tables, sparklines, events, and the config key=value parser.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab::ctl {

// One line per job, with a header.
std::string StatusTable(const v1::ListJobsResponse& jobs);
// The `top` screen (without the clear-screen sequence).
std::string TopScreen(const v1::ListJobsResponse& jobs, int width);
// ▁▂▃▄▅▆▇█ on a log scale over the finite values; '!' marks non-finite ones.
std::string Sparkline(const std::vector<double>& values);
std::string EventLine(const v1::Event& event);
// Sets `key` (a dotted field path such as "clip.max_norm", or "policy") from `value`.
// Enum values may be short ("clip" for POLICY_CLIP). INVALID_ARGUMENT names the problem.
absl::Status SetConfigField(const std::string& key, const std::string& value,
                            v1::PolicyConfig* config);
// Protobuf message as one line of JSON.
std::string ToJson(const google::protobuf::Message& message);

}  // namespace gstab::ctl
