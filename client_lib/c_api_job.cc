// The C ABI's configuration, multi-node and checkpoint functions (client_lib/gstab.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "client_lib/c_api_internal.h"
#include "client_lib/config_text.h"
#include "client_lib/gstab.h"

namespace {

using gstab::capi::CheckOwner;
using gstab::capi::Guarded;
using gstab::capi::Report;

// No name: no policy asked for (an existing or restored job keeps its own, a new one gets the
// default, stabilize).
absl::StatusOr<gstab::v1::PolicyConfig> PolicyFromName(const char* policy) {
  gstab::v1::PolicyConfig config;
  const std::string name = policy == nullptr ? "" : policy;
  if (name.empty()) return config;
  if (name == "stabilize") {  // v4's betas: a worker joining a Stable-SPAM job is refused
    config.set_policy(gstab::v1::POLICY_STABILIZE);
    config.mutable_stabilize()->set_preset(gstab::v1::STABILIZE_PRESET_V4);
  } else if (name == "stabilize-stable-spam") {
    config.set_policy(gstab::v1::POLICY_STABILIZE);
    config.mutable_stabilize()->set_preset(gstab::v1::STABILIZE_PRESET_STABLE_SPAM);
  } else if (name == "clip") {
    config.set_policy(gstab::v1::POLICY_CLIP);
  } else if (name == "zclip") {
    config.set_policy(gstab::v1::POLICY_ZCLIP);
  } else if (name == "monitor") {
    config.set_policy(gstab::v1::POLICY_MONITOR);
  } else {
    return absl::InvalidArgumentError(
        "unknown policy '" + name +
        "': expected stabilize, stabilize-stable-spam, clip, zclip or monitor");
  }
  return config;
}

// A malloc'ed copy of `bytes` (NUL-terminated, for text) the caller frees with gstab_free.
gstab_status HandOut(const std::string& bytes, void** out, size_t* size) {
  void* copy = std::malloc(bytes.size() + 1);
  if (copy == nullptr) return Report(absl::ResourceExhaustedError("out of host memory"));
  std::memcpy(copy, bytes.data(), bytes.size());
  static_cast<char*>(copy)[bytes.size()] = '\0';
  *out = copy;
  if (size != nullptr) *size = bytes.size();
  return GSTAB_OK;
}

// gstab_import_state and gstab_import_statistics.
gstab_status Import(gstab_client* client, const void* state, size_t size, uint32_t* groups,
                    bool keep_config) {
  if (groups != nullptr) *groups = 0;  // first: set when any check below fails, too
  if (client == nullptr || (state == nullptr && size != 0)) {
    return Report(absl::InvalidArgumentError("client and state must not be NULL"));
  }
  if (size == 0) {
    return Report(absl::InvalidArgumentError(
        "the state is empty: expected the bytes gstab_export_state gave"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    gstab::v1::ImportStateResponse imported;
    const absl::Status s = client->client->ImportState(
        std::string(static_cast<const char*>(state), size), &imported, keep_config);
    if (s.ok() && groups != nullptr) *groups = imported.groups();
    return Report(s);
  });
}

}  // namespace

extern "C" {

gstab_status gstab_attach_with_options(gstab_client* client, const char* job,
                                       const gstab_attach_options* options) {
  if (client == nullptr || job == nullptr || options == nullptr) {
    return Report(absl::InvalidArgumentError("client, job and options must not be NULL"));
  }
  if (options->rendezvous == nullptr && options->rendezvous_size != 0) {
    return Report(absl::InvalidArgumentError("rendezvous is NULL but rendezvous_size is not 0"));
  }
  if (options->rendezvous != nullptr && options->rendezvous_size == 0 && options->node_count > 1) {
    // Only NULL stands for $GSTAB_RENDEZVOUS: an empty blob is a caller's mistake.
    return Report(absl::InvalidArgumentError(
        "rendezvous_size is 0 for a job across nodes (node_count > 1): pass the blob global rank "
        "0 got from gstab_create_rendezvous, or NULL to read $GSTAB_RENDEZVOUS"));
  }
  return Guarded([&] {
    if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
    absl::StatusOr<gstab::v1::PolicyConfig> policy = PolicyFromName(options->policy);
    if (!policy.ok()) return Report(policy.status());
    absl::StatusOr<gstab::v1::PolicyConfig> settings =
        gstab::ParseConfigSettings(options->config == nullptr ? "" : options->config);
    if (!settings.ok()) return Report(settings.status());
    gstab::AttachOptions o;
    o.job = job;
    o.rank = options->rank;
    o.world_size = options->world_size;
    o.local_rank = options->local_rank;
    o.local_world_size = options->local_world_size;
    o.node_rank = options->node_rank;
    o.node_count = options->node_count;
    if (options->rendezvous != nullptr) {
      o.rendezvous.assign(static_cast<const char*>(options->rendezvous), options->rendezvous_size);
    }
    o.config = *std::move(policy);
    o.config.MergeFrom(*settings);
    return Report(client->client->Attach(o));
  });
}

int gstab_attach_restored(const gstab_client* client) {
  if (client == nullptr) return 0;
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s), 0;
  return client->client->attach_response().restored() ? 1 : 0;
}

gstab_status gstab_create_rendezvous(gstab_client* client, const char* job, uint32_t node_count,
                                     int cuda, void** blob, size_t* size) {
  if (blob != nullptr) *blob = nullptr;  // first: set when any check below fails, too
  if (size != nullptr) *size = 0;
  if (client == nullptr || job == nullptr || blob == nullptr || size == nullptr) {
    return Report(absl::InvalidArgumentError("client, job, blob and size must not be NULL"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<std::string> r = client->client->CreateRendezvous(job, node_count, cuda != 0);
    if (!r.ok()) return Report(r.status());
    return HandOut(*r, blob, size);
  });
}

gstab_status gstab_daemon_instance(gstab_client* client, char* instance) {
  if (instance != nullptr) *instance = '\0';  // first: set when any check below fails, too
  if (client == nullptr || instance == nullptr) {
    return Report(absl::InvalidArgumentError("client and instance must not be NULL"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<gstab::v1::IdentifyResponse> r = client->client->Identify();
    if (!r.ok()) return Report(r.status());
    // Callers gather it as text of that size: anything else comes from another kind of server.
    const std::string& text = r->instance();
    if (text.size() != GSTAB_INSTANCE_SIZE - 1 ||
        !std::all_of(text.begin(), text.end(), [](char c) { return absl::ascii_isxdigit(c); })) {
      return Report(absl::InternalError(
          absl::StrCat("the server named its instance '", absl::CHexEscape(text.substr(0, 64)),
                       "', not ", GSTAB_INSTANCE_SIZE - 1, " hex digits: is it a gstabd?")));
    }
    std::memcpy(instance, text.c_str(), GSTAB_INSTANCE_SIZE);
    return GSTAB_OK;
  });
}

gstab_status gstab_update_config(gstab_client* client, const char* settings, uint64_t* version) {
  if (version != nullptr) *version = 0;  // first: set when any check below fails, too
  if (client == nullptr || settings == nullptr) {
    return Report(absl::InvalidArgumentError("client and settings must not be NULL"));
  }
  return Guarded([&] {
    if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
    absl::StatusOr<gstab::v1::PolicyConfig> update = gstab::ParseConfigSettings(settings);
    if (!update.ok()) return Report(update.status());
    if (update->ByteSizeLong() == 0) {
      return Report(absl::InvalidArgumentError("no config settings given (KEY=VALUE ...)"));
    }
    absl::StatusOr<gstab::v1::UpdateConfigResponse> r = client->client->UpdateConfig(*update);
    if (!r.ok()) return Report(r.status());
    if (version != nullptr) *version = r->version();
    return GSTAB_OK;
  });
}

gstab_status gstab_export_state(gstab_client* client, void** state, size_t* size) {
  if (state != nullptr) *state = nullptr;  // first: set when any check below fails, too
  if (size != nullptr) *size = 0;
  if (client == nullptr || state == nullptr || size == nullptr) {
    return Report(absl::InvalidArgumentError("client, state and size must not be NULL"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<std::string> r = client->client->ExportState();
    if (!r.ok()) return Report(r.status());
    return HandOut(*r, state, size);
  });
}

gstab_status gstab_import_state(gstab_client* client, const void* state, size_t size,
                                uint32_t* groups) {
  return Import(client, state, size, groups, /*keep_config=*/false);
}

gstab_status gstab_import_statistics(gstab_client* client, const void* state, size_t size,
                                     uint32_t* groups) {
  return Import(client, state, size, groups, /*keep_config=*/true);
}

gstab_status gstab_get_stats_json(gstab_client* client, char** json) {
  if (json != nullptr) *json = nullptr;  // first: set when any check below fails, too
  if (client == nullptr || json == nullptr) {
    return Report(absl::InvalidArgumentError("client and json must not be NULL"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<gstab::v1::GetStatsResponse> r = client->client->GetStats();
    if (!r.ok()) return Report(r.status());
    void* text = nullptr;
    const gstab_status status = HandOut(gstab::ToJson(*r, /*with_defaults=*/true), &text, nullptr);
    *json = static_cast<char*>(text);
    return status;
  });
}

void gstab_free(void* p) { std::free(p); }

}  // extern "C"
