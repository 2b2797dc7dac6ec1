// The example trainer's model, optimizer and bookkeeping: a 16-64-64-1 ReLU MLP regressing a
// fixed random tanh "teacher" network on synthetic data, with hand-written backward passes.
// Deterministic for a given seed. Not thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "client_lib/arena.h"

namespace gstab::example {

class Mlp {
 public:
  explicit Mlp(uint32_t seed);

  // Declares one gradient tensor per parameter tensor (each its own norm group).
  void AddGradientsTo(GradientArena* arena) const;
  // Points the gradients at the allocated arena (same order as AddGradientsTo).
  void BindGradients(const GradientArena& arena);

  // Gradients of the MSE on this step's batch, written into the bound gradient memory.
  void ForwardBackward(int step);
  void ScaleGradients(float factor);
  double GradientNorm() const;
  double EvalLoss() const;

  size_t num_tensors() const { return params_.size(); }
  std::vector<float>& params(size_t i) { return params_[i]; }
  const float* grad(size_t i) const { return grads_[i]; }
  size_t num_parameters() const;

 private:
  struct Batch {
    std::vector<float> x, y;
  };
  Batch MakeBatch(std::mt19937* rng, int n) const;
  // Forward pass of the student; fills activations for the backward pass; returns outputs.
  void Forward(const float* x, int n, std::vector<float>* h1, std::vector<float>* h2,
               std::vector<float>* out) const;

  uint32_t seed_;
  std::vector<std::vector<float>> teacher_;  // W1 b1 W2 b2 W3 b3
  std::vector<std::vector<float>> params_;   // same layout
  std::vector<float*> grads_;
  Batch eval_;
};

class Optimizer {
 public:
  Optimizer(bool sgd, double lr, size_t num_parameters);
  void Apply(Mlp* model);

 private:
  bool sgd_;
  double lr_;
  int64_t t_ = 0;
  std::vector<double> m_, v_;
};

struct Summary {
  double final_loss = 0;  // mean eval loss of the last 20 steps
  double best_loss = 0;
  int steps_lost = 0;     // steps after spikes with the loss >10% above its pre-spike level
  bool diverged = false;  // non-finite loss, or the final loss above twice the initial one
};

class LossTracker {
 public:
  explicit LossTracker(std::vector<int> spike_steps) : spikes_(std::move(spike_steps)) {}
  void Record(int step, double loss) { losses_.push_back({step, loss}); }
  Summary Finish() const;

 private:
  std::vector<int> spikes_;
  std::vector<std::pair<int, double>> losses_;
};

}  // namespace gstab::example
