#include "examples/mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace gstab::example {
namespace {

constexpr int kIn = 16, kHidden = 64, kBatch = 64, kEval = 256;
const char* const kNames[] = {"fc1.weight", "fc1.bias",   "fc2.weight",
                              "fc2.bias",   "fc3.weight", "fc3.bias"};
const size_t kSizes[] = {kHidden * kIn, kHidden, kHidden* kHidden, kHidden, kHidden, 1};

// y = W x + b for a row-major W of shape (rows, cols).
void Affine(const std::vector<float>& w, const std::vector<float>& b, const float* x, int rows,
            int cols, float* y) {
  for (int r = 0; r < rows; ++r) {
    float acc = b[r];
    for (int c = 0; c < cols; ++c) acc += w[r * cols + c] * x[c];
    y[r] = acc;
  }
}

std::vector<std::vector<float>> RandomLayers(std::mt19937* rng) {
  std::vector<std::vector<float>> layers;
  const int fan_in[] = {kIn, 1, kHidden, 1, kHidden, 1};
  for (size_t i = 0; i < 6; ++i) {
    std::normal_distribution<float> d(0.0f, i % 2 ? 0.0f : 1.0f / std::sqrt(float(fan_in[i])));
    std::vector<float> t(kSizes[i]);
    for (float& v : t) v = i % 2 ? 0.0f : d(*rng);
    layers.push_back(std::move(t));
  }
  return layers;
}

}  // namespace

Mlp::Mlp(uint32_t seed) : seed_(seed) {
  std::mt19937 rng(seed);
  teacher_ = RandomLayers(&rng);
  params_ = RandomLayers(&rng);
  std::mt19937 eval_rng(seed ^ 0x5eed);
  eval_ = MakeBatch(&eval_rng, kEval);
}

void Mlp::AddGradientsTo(GradientArena* arena) const {
  for (size_t i = 0; i < 6; ++i) arena->AddTensor(kNames[i], kSizes[i], DType::kFloat32);
}

void Mlp::BindGradients(const GradientArena& arena) {
  grads_.clear();
  for (size_t i = 0; i < 6; ++i) grads_.push_back(static_cast<float*>(arena.data(i)));
}

size_t Mlp::num_parameters() const {
  size_t n = 0;
  for (size_t s : kSizes) n += s;
  return n;
}

Mlp::Batch Mlp::MakeBatch(std::mt19937* rng, int n) const {
  std::normal_distribution<float> d(0.0f, 1.0f);
  Batch b{std::vector<float>(static_cast<size_t>(n) * kIn), std::vector<float>(n)};
  for (float& v : b.x) v = d(*rng);
  float h1[kHidden], h2[kHidden], out;
  for (int s = 0; s < n; ++s) {
    Affine(teacher_[0], teacher_[1], &b.x[s * kIn], kHidden, kIn, h1);
    for (float& v : h1) v = std::tanh(v);
    Affine(teacher_[2], teacher_[3], h1, kHidden, kHidden, h2);
    for (float& v : h2) v = std::tanh(v);
    Affine(teacher_[4], teacher_[5], h2, 1, kHidden, &out);
    b.y[s] = out + 0.01f * d(*rng);
  }
  return b;
}

void Mlp::Forward(const float* x, int n, std::vector<float>* h1, std::vector<float>* h2,
                  std::vector<float>* out) const {
  h1->resize(static_cast<size_t>(n) * kHidden);
  h2->resize(static_cast<size_t>(n) * kHidden);
  out->resize(n);
  for (int s = 0; s < n; ++s) {
    float* a1 = &(*h1)[s * kHidden];
    float* a2 = &(*h2)[s * kHidden];
    Affine(params_[0], params_[1], x + s * kIn, kHidden, kIn, a1);
    for (int j = 0; j < kHidden; ++j) a1[j] = std::max(a1[j], 0.0f);
    Affine(params_[2], params_[3], a1, kHidden, kHidden, a2);
    for (int j = 0; j < kHidden; ++j) a2[j] = std::max(a2[j], 0.0f);
    Affine(params_[4], params_[5], a2, 1, kHidden, &(*out)[s]);
  }
}

void Mlp::ForwardBackward(int step) {
  std::mt19937 rng(seed_ * 7919u + static_cast<uint32_t>(step));
  const Batch b = MakeBatch(&rng, kBatch);
  std::vector<float> h1, h2, out;
  Forward(b.x.data(), kBatch, &h1, &h2, &out);
  for (size_t i = 0; i < 6; ++i) std::memset(grads_[i], 0, kSizes[i] * sizeof(float));
  float d2[kHidden], d1[kHidden];
  for (int s = 0; s < kBatch; ++s) {
    const float d_out = 2.0f * (out[s] - b.y[s]) / kBatch;
    const float* a1 = &h1[s * kHidden];
    const float* a2 = &h2[s * kHidden];
    for (int j = 0; j < kHidden; ++j) {
      grads_[4][j] += d_out * a2[j];
      d2[j] = a2[j] > 0 ? d_out * params_[4][j] : 0.0f;
    }
    grads_[5][0] += d_out;
    for (int j = 0; j < kHidden; ++j) {
      grads_[3][j] += d2[j];
      for (int k = 0; k < kHidden; ++k) grads_[2][j * kHidden + k] += d2[j] * a1[k];
    }
    for (int k = 0; k < kHidden; ++k) {
      float acc = 0;
      for (int j = 0; j < kHidden; ++j) acc += params_[2][j * kHidden + k] * d2[j];
      d1[k] = a1[k] > 0 ? acc : 0.0f;
    }
    for (int j = 0; j < kHidden; ++j) {
      grads_[1][j] += d1[j];
      for (int c = 0; c < kIn; ++c) grads_[0][j * kIn + c] += d1[j] * b.x[s * kIn + c];
    }
  }
}

void Mlp::ScaleGradients(float factor) {
  for (size_t i = 0; i < 6; ++i) {
    for (size_t k = 0; k < kSizes[i]; ++k) grads_[i][k] *= factor;
  }
}

double Mlp::GradientNorm() const {
  double sum = 0;
  for (size_t i = 0; i < 6; ++i) {
    for (size_t k = 0; k < kSizes[i]; ++k) sum += double(grads_[i][k]) * grads_[i][k];
  }
  return std::sqrt(sum);
}

double Mlp::EvalLoss() const {
  std::vector<float> h1, h2, out;
  Forward(eval_.x.data(), kEval, &h1, &h2, &out);
  double loss = 0;
  for (int s = 0; s < kEval; ++s) loss += double(out[s] - eval_.y[s]) * (out[s] - eval_.y[s]);
  return loss / kEval;
}

Optimizer::Optimizer(bool sgd, double lr, size_t num_parameters)
    : sgd_(sgd), lr_(lr), m_(num_parameters), v_(num_parameters) {}

void Optimizer::Apply(Mlp* model) {
  ++t_;
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const double c1 = 1 - std::pow(b1, double(t_)), c2 = 1 - std::pow(b2, double(t_));
  size_t k = 0;
  for (size_t i = 0; i < model->num_tensors(); ++i) {
    std::vector<float>& p = model->params(i);
    const float* g = model->grad(i);
    for (size_t j = 0; j < p.size(); ++j, ++k) {
      if (sgd_) {
        p[j] -= static_cast<float>(lr_ * g[j]);
        continue;
      }
      m_[k] = b1 * m_[k] + (1 - b1) * g[j];
      v_[k] = b2 * v_[k] + (1 - b2) * double(g[j]) * g[j];
      p[j] -= static_cast<float>(lr_ * (m_[k] / c1) / (std::sqrt(v_[k] / c2) + eps));
    }
  }
}

Summary LossTracker::Finish() const {
  Summary s;
  if (losses_.empty()) return s;
  s.best_loss = losses_[0].second;
  for (const auto& [step, loss] : losses_) {
    if (!std::isfinite(loss)) s.diverged = true;
    if (loss < s.best_loss) s.best_loss = loss;
  }
  const size_t tail = std::min<size_t>(20, losses_.size());
  for (size_t i = losses_.size() - tail; i < losses_.size(); ++i) s.final_loss += losses_[i].second;
  s.final_loss /= double(tail);
  if (!std::isfinite(s.final_loss) || s.final_loss > 2 * losses_[0].second) s.diverged = true;
  // Steps lost: after each spike, until the next one, the steps whose loss is more than 10%
  // above the mean of the 10 steps before the spike.
  std::vector<int> spikes = spikes_;
  std::sort(spikes.begin(), spikes.end());
  for (size_t k = 0; k < spikes.size(); ++k) {
    const int spike = spikes[k];
    const int next = k + 1 < spikes.size() ? spikes[k + 1] : std::numeric_limits<int>::max();
    double before = 0;
    int n = 0;
    for (const auto& [step, loss] : losses_) {
      if (step >= spike - 10 && step < spike) {
        before += loss;
        ++n;
      }
    }
    if (n == 0) continue;
    before /= n;
    for (const auto& [step, loss] : losses_) {
      if (step >= spike && step < next && !(loss <= 1.1 * before)) ++s.steps_lost;
    }
  }
  return s;
}

}  // namespace gstab::example
