#include "client_lib/config_text.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/utf8.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace gstab {

absl::Status SetConfigField(const std::string& key, const std::string& value,
                            v1::PolicyConfig* config) {
  using google::protobuf::FieldDescriptor;
  google::protobuf::Message* msg = config;
  const std::vector<std::string> path = absl::StrSplit(key, '.');
  for (size_t i = 0; i < path.size(); ++i) {
    const FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(path[i]);
    if (f == nullptr || f->is_repeated()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown config key '", key,
                       "' (the keys are gstab.v1.PolicyConfig's fields, dotted: `gstabctl config "
                       "show` lists them with a job's values)"));
    }
    const google::protobuf::Reflection* r = msg->GetReflection();
    if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (i + 1 == path.size()) {
        return absl::InvalidArgumentError(absl::StrCat("'", key, "' is a section, not a value"));
      }
      msg = r->MutableMessage(msg, f);
      continue;
    }
    if (i + 1 != path.size()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown config key '", key, "'"));
    }
    bool ok = true;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        double d;
        // Decimal only: strtod would read "0x10" as 16, which nobody writing a norm means.
        ok = value.find_first_of("xXpP") == std::string::npos && absl::SimpleAtod(value, &d);
        if (ok) r->SetDouble(msg, f, d);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT32: {
        uint32_t u;
        ok = absl::SimpleAtoi(value, &u);
        if (ok) r->SetUInt32(msg, f, u);
        break;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool b;
        ok = absl::SimpleAtob(value, &b);
        if (ok) r->SetBool(msg, f, b);
        break;
      }
      case FieldDescriptor::CPPTYPE_ENUM: {
        const std::string upper = absl::AsciiStrToUpper(absl::StrReplaceAll(value, {{"-", "_"}}));
        const google::protobuf::EnumValueDescriptor* found = f->enum_type()->FindValueByName(upper);
        for (int k = 0; found == nullptr && k < f->enum_type()->value_count(); ++k) {
          const std::string& name = f->enum_type()->value(k)->name();
          if (absl::EndsWith(name, "_" + upper)) found = f->enum_type()->value(k);
        }
        ok = found != nullptr && found->number() != 0;
        if (ok) r->SetEnum(msg, f, found);
        if (!ok) {
          std::vector<std::string> names;
          for (int k = 1; k < f->enum_type()->value_count(); ++k) {
            names.push_back(f->enum_type()->value(k)->name());
          }
          const bool preset = key == "policy" && absl::StrContains(upper, "SPAM");
          return absl::InvalidArgumentError(absl::StrCat(
              "config key '", key, "' cannot take the value '", value, "': it takes ",
              absl::StrJoin(names, ", "), " (or the part after the prefix, lower case)",
              preset ? "; the Stable-SPAM preset is policy=stabilize stabilize.preset=stable-spam"
                     : ""));
        }
        break;
      }
      default:
        ok = false;
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("config key '", key, "' cannot take the value '", value, "'"));
    }
  }
  return absl::OkStatus();
}

namespace {

void AppendSettings(const google::protobuf::Message& m, const std::string& prefix,
                    std::vector<std::string>* out) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    const std::string key = absl::StrCat(prefix, f->name());
    if (f->is_repeated()) continue;
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      AppendSettings(r->GetMessage(m, f), key + ".", out);
      continue;
    }
    std::string value;
    google::protobuf::TextFormat::PrintFieldValueToString(m, f, -1, &value);
    out->push_back(absl::StrCat(key, "=", value));
  }
}

}  // namespace

std::string ConfigSettingsText(const v1::PolicyConfig& config) {
  std::vector<std::string> settings;
  AppendSettings(config, "", &settings);
  return absl::StrJoin(settings, "\n");
}

std::string ToJson(const google::protobuf::Message& message, bool with_defaults) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = with_defaults;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

absl::StatusOr<v1::PolicyConfig> ParseConfigSettings(absl::string_view settings) {
  if (!IsValidUtf8(settings)) {  // refused before any of it is quoted back
    return absl::InvalidArgumentError(
        absl::StrCat("config settings '", absl::CHexEscape(settings), "' are not UTF-8 text"));
  }
  v1::PolicyConfig config;
  for (absl::string_view item :
       absl::StrSplit(settings, absl::ByAnyChar(" \t\r\n,"), absl::SkipEmpty())) {
    const std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.size() != 2 || kv[0].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config setting '", item, "' is not KEY=VALUE (for example clip.max_norm=0.5)"));
    }
    if (absl::Status s = SetConfigField(kv[0], kv[1], &config); !s.ok()) return s;
  }
  return config;
}

}  // namespace gstab
