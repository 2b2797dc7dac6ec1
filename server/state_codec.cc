#include "server/state_codec.h"

#include <climits>
#include <cmath>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fnv1a.h"
#include "common/job_name.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "server/registration.h"
#include "server/reserved_names.h"

namespace gstab {
namespace {

// JobState.checksum's key on the wire: field 15, wire type 1 (64 bits, little-endian).
constexpr unsigned char kChecksumKey = (15 << 3) | 1;
// What an older gstabd's bytes begin with: format_version's key (field 1, a varint), which it
// always set. Bytes that begin with neither are no state gstabd wrote (or a checksum's key
// changed, which must not pass for an older state read unchecked).
constexpr unsigned char kUncheckedKey = (1 << 3) | 0;

// What bytes may parse into. Parsing allocates per field entry (a GroupState takes about 180
// bytes for its 2 bytes on the wire, an unknown field tens), so 64 MiB of empty entries would
// take gigabytes of gstabd's memory before ValidateJobState refused them; the largest state
// gstabd writes (kMaxGroupsPerJob groups of 21 fields) has about 1.4 million entries.
constexpr size_t kMaxWireEntries = size_t{2} << 20;
constexpr size_t kMaxConfigHistory = 1024;  // gstabd keeps 64
constexpr int kMaxNesting = 8;              // JobState, ConfigChange, PolicyConfig and its parts

struct WireBudget {
  size_t entries = 0;
  size_t groups = 0;
  size_t history = 0;
};

// Walks the message of type `type` in `in` (to its limit) without building it: "" when it is
// well formed and within the budget, else what is wrong.
std::string OverBudget(google::protobuf::io::CodedInputStream* in,
                       const google::protobuf::Descriptor* type, int depth, WireBudget* budget) {
  using google::protobuf::internal::WireFormatLite;
  const std::string malformed = "corrupt or truncated";
  const bool top = type == v1::JobState::descriptor();
  for (uint32_t tag = in->ReadTag(); tag != 0; tag = in->ReadTag()) {
    if (++budget->entries > kMaxWireEntries) {
      return absl::StrCat("more than ", kMaxWireEntries, " fields in all");
    }
    // Groups (wire types 3 and 4) are no proto3 encoding, and no gstabd wrote one; skipped
    // whole, their fields would go uncounted and be kept, each, as an unknown field.
    const WireFormatLite::WireType wire = WireFormatLite::GetTagWireType(tag);
    if (wire == WireFormatLite::WIRETYPE_START_GROUP ||
        wire == WireFormatLite::WIRETYPE_END_GROUP) {
      return malformed;
    }
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    if (top && number == v1::JobState::kGroupsFieldNumber && ++budget->groups > kMaxGroupsPerJob) {
      return absl::StrCat("more than ", kMaxGroupsPerJob, " groups: a job has at most ",
                          kMaxGroupsPerJob);
    }
    if (top && number == v1::JobState::kConfigHistoryFieldNumber &&
        ++budget->history > kMaxConfigHistory) {
      return absl::StrCat("more than ", kMaxConfigHistory, " configuration changes");
    }
    const google::protobuf::FieldDescriptor* field = type->FindFieldByNumber(number);
    if (field != nullptr && field->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE &&
        wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length = 0;
      if (depth >= kMaxNesting || !in->ReadVarint32(&length)) return malformed;
      const auto limit = in->PushLimit(static_cast<int>(length));
      if (std::string why = OverBudget(in, field->message_type(), depth + 1, budget);
          !why.empty()) {
        return why;
      }
      if (!in->ConsumedEntireMessage()) return malformed;
      in->PopLimit(limit);
    } else if (!WireFormatLite::SkipField(in, tag)) {
      return malformed;
    }
  }
  return "";
}

}  // namespace

std::string EncodeJobState(v1::JobState state) {
  state.clear_checksum();
  const std::string body = state.SerializeAsString();
  std::string out(kEncodedChecksumBytes, '\0');
  out[0] = static_cast<char>(kChecksumKey);
  const uint64_t check = Fnv1a(body);
  for (size_t i = 0; i < 8; ++i) out[1 + i] = static_cast<char>((check >> (8 * i)) & 0xff);
  return out + body;
}

absl::StatusOr<v1::JobState> DecodeJobState(absl::string_view bytes, absl::string_view what) {
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     " are empty: not a gstab JobState (ExportState's bytes, or a "
                     "checkpoint's)"));
  }
  const int first = static_cast<unsigned char>(bytes[0]);
  if (first != kChecksumKey && first != kUncheckedKey) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " are not a gstab JobState (corrupt or truncated)"));
  }
  if (first == kChecksumKey) {
    uint64_t check = 0;
    for (size_t i = 0; i < 8 && 1 + i < bytes.size(); ++i) {
      check |= uint64_t{static_cast<unsigned char>(bytes[1 + i])} << (8 * i);
    }
    if (bytes.size() < kEncodedChecksumBytes ||
        Fnv1a(bytes.substr(kEncodedChecksumBytes)) != check) {
      return absl::DataLossError(
          absl::StrCat(what,
                       " are damaged: their checksum does not match (cut short, or changed since "
                       "gstabd wrote them)"));
    }
  }
  if (bytes.size() > size_t{INT_MAX}) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " are not a gstab JobState (", bytes.size(), " bytes)"));
  }
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  WireBudget budget;
  std::string why = OverBudget(&in, v1::JobState::descriptor(), 0, &budget);
  if (why.empty() && !in.ConsumedEntireMessage()) why = "corrupt or truncated";
  if (!why.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " are not a gstab JobState gstabd could have written (", why, ")"));
  }
  v1::JobState state;
  if (!state.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " are not a gstab JobState (corrupt or truncated)"));
  }
  state.clear_checksum();
  return state;
}

v1::GroupState GroupStateToProto(const std::string& name, const GroupStats& s) {
  v1::GroupState p;
  p.set_name(name);
  p.set_t(s.t);
  p.set_m(s.m);
  p.set_v(s.v);
  p.set_zclip_mean(s.zclip_mean);
  p.set_zclip_var(s.zclip_var);
  p.set_zclip_warm_sum(s.zclip_warm_sum);
  p.set_zclip_warm_sumsq(s.zclip_warm_sumsq);
  p.set_spike_mean(s.spike_mean);
  p.set_spike_var(s.spike_var);
  p.set_short_ema(s.short_ema);
  p.set_long_ema(s.long_ema);
  p.set_consecutive_spikes(s.consecutive_spikes);
  p.set_consecutive_non_finite(s.consecutive_non_finite);
  p.set_calm_steps(s.calm_steps);
  p.set_diverging(s.diverging);
  p.set_steps(s.steps);
  p.set_non_finite_steps(s.non_finite_steps);
  p.set_zero_norm_steps(s.zero_norm_steps);
  p.set_spikes(s.spikes);
  return p;
}

GroupStats GroupStateFromProto(const v1::GroupState& p) {
  GroupStats s;
  s.t = p.t();
  s.m = p.m();
  s.v = p.v();
  s.zclip_mean = p.zclip_mean();
  s.zclip_var = p.zclip_var();
  s.zclip_warm_sum = p.zclip_warm_sum();
  s.zclip_warm_sumsq = p.zclip_warm_sumsq();
  s.spike_mean = p.spike_mean();
  s.spike_var = p.spike_var();
  s.short_ema = p.short_ema();
  s.long_ema = p.long_ema();
  s.consecutive_spikes = p.consecutive_spikes();
  s.consecutive_non_finite = p.consecutive_non_finite();
  s.calm_steps = p.calm_steps();
  s.diverging = p.diverging();
  s.steps = p.steps();
  s.non_finite_steps = p.non_finite_steps();
  s.zero_norm_steps = p.zero_norm_steps();
  s.spikes = p.spikes();
  return s;
}

absl::Status CheckStepNumber(uint64_t step) {
  if (step < kStepLimit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("step ", step,
                   " is not below 2^62, where step numbers end: a negative step number passed "
                   "as an unsigned one? The job is unchanged"));
}

namespace {
// Norms of float gradients, summed in double, stay below about 1e51 (3.4e38, fp32's largest,
// times the root of 2^40 elements); zclip_warm_sum, a sum over the warm-up's few steps, too.
// Statistics far past that are no run's, and could overflow to inf once re-expressed for other
// betas (RescaleStabilizerEmas), leaving every later step of the job skipped.
constexpr double kMaxNormStatistic = 1e60;
}  // namespace

absl::Status ValidateJobState(const v1::JobState& state) {
  if (state.format_version() == 0) {
    return absl::InvalidArgumentError(
        "the state has no format_version: not a gstab JobState (ExportState's bytes, or a "
        "checkpoint's)");
  }
  if (state.format_version() != kJobStateFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state format version ", state.format_version(), " is not supported (expected ",
        kJobStateFormatVersion, "; a newer release's?)"));
  }
  // The job it was exported from, which gstabd logs: a job's name or none.
  if (!state.job().empty() && !IsJobName(state.job())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the state's job (", state.job().size(),
        " bytes) is not a job name (1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-'): "
        "not a state gstabd exported"));
  }
  if (state.last_step() >= kStepLimit) {  // no later step could be taken
    return absl::InvalidArgumentError(
        absl::StrCat("the state's last_step ", state.last_step(), " must be below 2^62"));
  }
  if (static_cast<size_t>(state.groups_size()) > kMaxGroupsPerJob) {
    return absl::InvalidArgumentError(absl::StrCat("the state has ", state.groups_size(),
                                                   " groups; a job may have at most ",
                                                   kMaxGroupsPerJob));
  }
  std::set<std::string> names;
  for (int i = 0; i < state.groups_size(); ++i) {
    const v1::GroupState& g = state.groups(i);
    const std::string where = absl::StrCat("group ", i, " ('", g.name(), "')");
    if (absl::Status s = ValidateTensorName(absl::StrCat("group ", i, " name"), g.name());
        !s.ok()) {
      return s;
    }
    if (g.name() == kOtherGroup) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the name '", kOtherGroup, "' is reserved"));
    }
    if (!names.insert(g.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate group name"));
    }
    // Each bounded by what gradients can give (kMaxNormStatistic), squares by its square.
    const std::tuple<const char*, double, bool> statistics[] = {
        {"m", g.m(), false},
        {"v", g.v(), true},
        {"zclip_mean", g.zclip_mean(), false},
        {"zclip_var", g.zclip_var(), true},
        {"zclip_warm_sum", g.zclip_warm_sum(), false},
        {"zclip_warm_sumsq", g.zclip_warm_sumsq(), true},
        {"spike_mean", g.spike_mean(), false},
        {"spike_var", g.spike_var(), true},
        {"short_ema", g.short_ema(), false},
        {"long_ema", g.long_ema(), false},
    };
    for (const auto& [field, value, squared] : statistics) {
      if (!std::isfinite(value) || value < 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, " is ", value,
                                                       "; statistics are finite and not negative"));
      }
      const double bound = squared ? kMaxNormStatistic * kMaxNormStatistic : kMaxNormStatistic;
      if (value > bound) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": ", field, " is ", value, ", past ", bound,
                         ", more than any gradients' norms can give"));
      }
    }
    if (g.t() >= kStepLimit || g.steps() >= kStepLimit) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": step counts t ", g.t(), " and steps ", g.steps(), " must be below 2^62"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gstab
