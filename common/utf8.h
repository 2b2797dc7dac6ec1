// UTF-8 checks for the text fields of gstab's messages. proto3 `string` fields must hold UTF-8:
// protobuf refuses to parse a message where one does not, so gRPC answers such a request with a
// bare INTERNAL that says nothing of the field.
#pragma once

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace gstab {

// Whether `text` is well-formed UTF-8: no stray or missing continuation bytes, no overlong
// forms, no surrogates, nothing above U+10FFFF.
bool IsValidUtf8(absl::string_view text);

// The path of the first `string` field of `message` (nested and repeated ones too) that is not
// UTF-8, such as "tensors[3].name"; nullopt when every one is.
std::optional<std::string> FirstNonUtf8Field(const google::protobuf::Message& message);

}  // namespace gstab
