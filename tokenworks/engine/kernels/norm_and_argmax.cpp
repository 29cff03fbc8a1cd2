// The rows of a step's end: rms_norm, the model's final norm of the rows that sample, in one
// call (and rms_norm_rows, the same loop StepLayers runs on every layer), and greedy_tokens,
// the argmax of each row of logits at the speed of reading them.

#include "cpu_kernels.h"
#include "vectors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>

namespace tokenworks {

namespace {

// y = x / sqrt(mean(x^2) + eps) * weight for one row.
void rms_norm_row(float* y, const float* x, const float* weight, int64_t width, float eps) {
  const float inverse = 1.0f / std::sqrt(dot(x, x, width) / static_cast<float>(width) + eps);
  for (int64_t i = 0; i < width; ++i) y[i] = x[i] * inverse * weight[i];
}

}  // namespace

// rms_norm_row for each of `rows` rows of x (width floats apart) into y, on the threads.
void rms_norm_rows(float* y, const float* x, const float* weight, int64_t rows, int64_t width, float eps) {
  for_each_row(rows, [&](int64_t r) { rms_norm_row(y + r * width, x + r * width, weight, width, eps); });
}

// rms_norm of each row of x: (N, width), times weight: the model's final norm of the rows that
// sample, in one call. After a step has streamed the weights and the KV cache through the
// caches, each of the ~5 tensor ops of F.rms_norm starts cold: 0.26 ms for 256 rows of the
// benchmark's tiny model, where it takes 0.035 ms warm.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float(x, "rms_norm: x");
  check_float(weight, "rms_norm: weight");
  TORCH_CHECK(x.dim() == 2 && weight.numel() == x.size(1), "rms_norm: (N, width) rows and a weight of width");
  at::Tensor y = at::empty_like(x);
  rms_norm_rows(y.data_ptr<float>(), x.data_ptr<float>(), weight.data_ptr<float>(), x.size(0), x.size(1),
                static_cast<float>(eps));
  return y;
}

// The index of each row's largest logit, as torch.argmax gives it (the first of equal ones; the
// first NaN where a row has one): greedy sampling's token. torch's argmax carries an index per
// lane and reads 256 rows of 8,192 logits in 0.74 ms on 2 threads, where their max takes 0.05;
// this finds the max on vectors, then the first index holding it.
at::Tensor greedy_tokens(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.stride(1) == 1 && logits.size(1) > 0,
              "greedy_tokens: (rows, vocab) float32 logits with contiguous rows");
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  const float* base = logits.data_ptr<float>();
  int64_t* out = tokens.data_ptr<int64_t>();
  for_each_row(rows, [&](int64_t r) {
    const float* x = base + r * stride;
    Vec highest = Vec{} - kInfinity;
    IntVec unordered = {};  // lanes that met a NaN (x != x)
    int64_t i = 0;
    for (; i + kLanes <= vocab; i += kLanes) {
      const Vec v = load(x + i);
      highest = maximum(highest, v);
      unordered |= v != v;
    }
    float best = -kInfinity;
    bool nan = false;
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      best = std::max(best, highest[lane]);
      nan |= unordered[lane] != 0;
    }
    for (; i < vocab; ++i) {
      best = std::max(best, x[i]);
      nan |= std::isnan(x[i]);
    }
    int64_t index = 0;
    while (index < vocab && !(nan ? std::isnan(x[index]) : x[index] == best)) ++index;
    out[r] = index;
  });
  return tokens;
}

}  // namespace tokenworks
