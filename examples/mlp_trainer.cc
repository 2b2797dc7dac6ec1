// A small real training program that hands its gradients to gstabd every step.
//
// A 3-layer MLP learns a fixed random "teacher" MLP on synthetic data (regression, MSE), with
// Adam or SGD. Its gradients live in a shared-memory arena registered with gstabd; after each
// backward pass it calls Step, which rescales them in place, then it applies the optimizer
// (or skips the step when gstabd says the gradients were non-finite). Chosen steps get their
// gradients multiplied by a large factor to imitate the rare spikes that wreck real runs.
//
//   mlp_trainer --socket=/tmp/gstabd.sock --policy=stabilize --spike_steps=150,300
//   mlp_trainer --policy=none            # no daemon: the unprotected baseline
//
// With its defaults (Adam, lr 1e-3) and spikes of 1e4, `stabilize` loses as many steps after a
// spike as no gstab (the v4 defaults' long memory of it: docs/method.md), where `clip` and
// `stabilize-stable-spam` lose none; with `--optimizer=sgd --lr=0.05` (scripts/demo) no gstab
// diverges and each policy trains on.
//
// gstabd keeps the job (--job, default mlp-example) after the run, with its statistics and
// configuration: run again against the same gstabd with another --job (scripts/demo names one
// per policy), or `gstabctl forget --job=mlp-example` first. A second run under the same name is
// refused at its first step (step 1 is not after the job's last) or, with another --policy, at
// attach.
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client_lib/client.h"
#include "examples/mlp.h"

ABSL_FLAG(std::string, socket, "/run/gstab/gstabd.sock", "gstabd's unix socket");
ABSL_FLAG(std::string, job, "mlp-example", "job name");
ABSL_FLAG(std::string, policy, "stabilize",
          "none (no gstab), stabilize, stabilize-stable-spam, clip, zclip, monitor");
ABSL_FLAG(double, clip_max_norm, 1.0, "max_norm of the clip policy");
ABSL_FLAG(std::string, optimizer, "adam", "adam or sgd");
ABSL_FLAG(double, lr, 1e-3, "learning rate");
ABSL_FLAG(int, steps, 600, "training steps");
ABSL_FLAG(std::string, spike_steps, "200,400", "comma-separated steps whose gradients spike");
ABSL_FLAG(double, spike_factor, 1e4, "gradient multiplier on spike steps (100 to 1e6)");
ABSL_FLAG(uint32_t, seed, 1, "seed of data, teacher and initial weights");
ABSL_FLAG(int, print_every, 50, "print a step line every N steps (and on every spike step)");

namespace {

std::vector<int> ParseSteps(const std::string& list) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int step;
    if (absl::SimpleAtoi(part, &step)) out.push_back(step);
  }
  return out;
}

// The configuration of --policy (not "none"); an error naming the policies for another name.
absl::StatusOr<gstab::v1::PolicyConfig> PolicyConfigFor(const std::string& policy) {
  gstab::v1::PolicyConfig c;
  if (policy == "stabilize") {
    c.set_policy(gstab::v1::POLICY_STABILIZE);
  } else if (policy == "stabilize-stable-spam") {
    c.set_policy(gstab::v1::POLICY_STABILIZE);
    c.mutable_stabilize()->set_preset(gstab::v1::STABILIZE_PRESET_STABLE_SPAM);
  } else if (policy == "clip") {
    c.set_policy(gstab::v1::POLICY_CLIP);
    c.mutable_clip()->set_max_norm(absl::GetFlag(FLAGS_clip_max_norm));
  } else if (policy == "zclip") {
    c.set_policy(gstab::v1::POLICY_ZCLIP);
  } else if (policy == "monitor") {
    c.set_policy(gstab::v1::POLICY_MONITOR);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --policy '", policy,
                     "': none, stabilize, stabilize-stable-spam, clip, zclip or monitor"));
  }
  return c;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "mlp_trainer: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "trains a small MLP whose gradients gstabd stabilizes: mlp_trainer [--socket=PATH] "
      "[--policy=stabilize|stabilize-stable-spam|clip|zclip|monitor|none] [--spike_steps=N,...] "
      "[--steps=N] ...");
  absl::ParseCommandLine(argc, argv);
  const std::string policy = absl::GetFlag(FLAGS_policy);
  const bool use_gstab = policy != "none";
  absl::StatusOr<gstab::v1::PolicyConfig> config = PolicyConfigFor(policy);
  if (use_gstab && !config.ok()) return Fail(config.status());
  const std::vector<int> spikes = ParseSteps(absl::GetFlag(FLAGS_spike_steps));
  const int steps = absl::GetFlag(FLAGS_steps);

  gstab::example::Mlp model(absl::GetFlag(FLAGS_seed));
  gstab::GradientArena arena;
  model.AddGradientsTo(&arena);
  if (absl::Status s = arena.Allocate(); !s.ok()) return Fail(s);
  model.BindGradients(arena);

  std::unique_ptr<gstab::Client> client;
  if (use_gstab) {
    auto connected = gstab::Client::Connect(absl::GetFlag(FLAGS_socket));
    if (!connected.ok()) return Fail(connected.status());
    client = *std::move(connected);
    gstab::AttachOptions attach;
    attach.job = absl::GetFlag(FLAGS_job);
    attach.config = *config;
    if (absl::Status s = client->Attach(attach); !s.ok()) return Fail(s);
    if (absl::Status s = client->Register(arena); !s.ok()) return Fail(s);
  }

  gstab::example::Optimizer optimizer(absl::GetFlag(FLAGS_optimizer) == "sgd",
                                      absl::GetFlag(FLAGS_lr), model.num_parameters());
  gstab::example::LossTracker tracker(spikes);
  std::printf("%6s %12s %12s %12s  %s\n", "step", "eval_loss", "raw_norm", "stab_norm", "flags");
  for (int step = 1; step <= steps; ++step) {
    model.ForwardBackward(step);
    bool spike_step = false;
    for (int s : spikes) spike_step |= s == step;
    if (spike_step) model.ScaleGradients(static_cast<float>(absl::GetFlag(FLAGS_spike_factor)));
    const double raw = model.GradientNorm();
    double stabilized = raw;
    std::string flags = spike_step ? "injected-spike" : "";
    bool skip = false;
    if (use_gstab) {
      absl::StatusOr<gstab::v1::StepResponse> r = client->Step(static_cast<uint64_t>(step));
      if (!r.ok()) return Fail(r.status());
      stabilized = model.GradientNorm();
      skip = r->skip();
      int detected = 0;
      for (const auto& g : r->groups()) detected += g.spike();
      if (detected > 0) flags += " spike-detected(" + std::to_string(detected) + " groups)";
      if (skip) flags += " skip";
      if (r->diverging()) flags += " diverging";
    }
    if (!skip) optimizer.Apply(&model);
    const double loss = model.EvalLoss();
    tracker.Record(step, loss);
    if (step % absl::GetFlag(FLAGS_print_every) == 0 || spike_step || step == 1) {
      std::printf("%6d %12.6g %12.4g %12.4g  %s\n", step, loss, raw, stabilized, flags.c_str());
    }
  }
  if (use_gstab) (void)client->Detach();
  const gstab::example::Summary summary = tracker.Finish();
  std::printf("SUMMARY policy=%s final_loss=%.6g best_loss=%.6g steps_lost=%d diverged=%s\n",
              policy.c_str(), summary.final_loss, summary.best_loss, summary.steps_lost,
              summary.diverged ? "yes" : "no");
  return 0;
}
