// StepLayers' methods (the class and why it exists: step_layers.h) and the plain loops of a
// layer between its products and attention: rotary, cache writes and SwiGLU.

#include "step_layers.h"

#include "cpu_kernels.h"
#include "vectors.h"

#include <ATen/ops/empty.h>

#include <cmath>
#include <cstring>

namespace tokenworks {

namespace {

// Rotary embedding in place on `count` heads of `dim` at x (heads dim apart), in the two-halves
// layout of Hugging Face: (a, b) -> (a cos - b sin, b cos + a sin), cos and sin of width dim.
void rotate_heads(float* x, int64_t count, int64_t dim, const float* cos, const float* sin) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < count; ++h, x += dim) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * cos[i] - b * sin[i];
      x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

// out[i] = silu(gate[i]) * up[i], with silu(g) = g / (1 + e^-g) from e = exp(-|g|) so the
// exponential is the vectorized one of non-positive arguments (computed in out, then used).
void silu_times(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = -std::abs(gate[i]);
  exp_nonpositive(out, n);
  for (int64_t i = 0; i < n; ++i) {
    const float e = out[i];
    const float sigmoid = gate[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    out[i] = gate[i] * sigmoid * up[i];
  }
}

// qkv: (N, (H + 2K) D) contiguous projections of N tokens. Rotates each row's queries and keys
// in place by cos, sin: (N, D), and stores its keys and values in slot slots[n] of k_cache,
// v_cache: (blocks, block_size, K, D). One pass instead of the ~8 tensor ops (and their
// temporaries) of rotating and index_copy_.
void rotate_and_store(at::Tensor& qkv, const float* cos, const float* sin, const int64_t* slots, at::Tensor& k_cache,
                      at::Tensor& v_cache, int64_t heads) {
  const int64_t kv_heads = k_cache.size(2), dim = k_cache.size(3);
  const int64_t q_width = heads * dim, kv_width = kv_heads * dim, width = qkv.size(1);
  float* base = qkv.data_ptr<float>();
  float* k_slots = k_cache.data_ptr<float>();
  float* v_slots = v_cache.data_ptr<float>();
  for_each_row(qkv.size(0), [&](int64_t r) {
    float* row = base + r * width;
    rotate_heads(row, heads + kv_heads, dim, cos + r * dim, sin + r * dim);  // queries and keys
    std::memcpy(k_slots + slots[r] * kv_width, row + q_width, kv_width * sizeof(float));
    std::memcpy(v_slots + slots[r] * kv_width, row + q_width + kv_width, kv_width * sizeof(float));
  });
}

// gate_up: (N, 2 I) contiguous, gate then up -> (N, I) silu(gate) * up.
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  const int64_t rows = gate_up.size(0), intermediate = gate_up.size(1) / 2;
  at::Tensor out = at::empty({rows, intermediate}, gate_up.options());
  const float* in = gate_up.data_ptr<float>();
  float* outs = out.data_ptr<float>();
  for_each_row(rows, [&](int64_t r) {
    const float* gate = in + r * 2 * intermediate;
    silu_times(outs + r * intermediate, gate, gate + intermediate, intermediate);
  });
  return out;
}

}  // namespace

void StepLayers::add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm,
                           const std::vector<at::Tensor>& matrices, const std::vector<c10::optional<at::Tensor>>& packed,
                           const std::vector<c10::optional<at::Tensor>>& biases, const at::Tensor& k_cache,
                           const at::Tensor& v_cache) {
  TORCH_CHECK(matrices.size() == 4 && packed.size() == 4 && biases.size() == 4,
              "StepLayers: qkv, o, gate_up and down");
  const int64_t hidden = input_norm.numel(), q_width = heads_ * head_dim_;
  const int64_t intermediate = matrices[3].size(1);
  const int64_t shapes[4][2] = {{q_width + 2 * kv_heads_ * head_dim_, hidden},
                                {hidden, q_width},
                                {2 * intermediate, hidden},
                                {hidden, intermediate}};
  Layer layer{input_norm, post_norm, {}, k_cache, v_cache};
  for (int i = 0; i < 4; ++i) {
    check_float(matrices[i], "StepLayers: every weight matrix");
    TORCH_CHECK(matrices[i].size(0) == shapes[i][0] && matrices[i].size(1) == shapes[i][1],
                "StepLayers: layer shapes");
    if (biases[i].has_value()) check_float(*biases[i], "StepLayers: every bias");
    TORCH_CHECK(!biases[i].has_value() || biases[i]->numel() == shapes[i][0], "StepLayers: bias shapes");
    layer.projections[i] = {matrices[i], packed[i].value_or(matrices[i]), biases[i]};
  }
  for (const at::Tensor* t : {&input_norm, &post_norm, &k_cache, &v_cache}) check_float(*t, "StepLayers: norms and caches");
  TORCH_CHECK(post_norm.numel() == hidden && k_cache.size(2) == kv_heads_ && k_cache.size(3) == head_dim_,
              "StepLayers: norm and cache shapes");
  layers_.push_back(std::move(layer));
}

void StepLayers::forward(at::Tensor& hidden, const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& decode_rows, const at::Tensor& decode_tables,
                         const at::Tensor& decode_contexts, const at::Tensor& chunk_rows,
                         const at::Tensor& chunk_lengths, const at::Tensor& chunk_contexts,
                         const at::Tensor& chunk_tables) {
  const int64_t rows = hidden.size(0), width = hidden.size(1), dim = head_dim_, q_width = heads_ * dim;
  TORCH_CHECK(slots.numel() == rows && cos.size(0) == rows && cos.size(1) == dim && sin.sizes() == cos.sizes(),
              "StepLayers: one slot and rotation per row");
  TORCH_CHECK(decode_contexts.numel() == decode_rows.numel() && chunk_lengths.numel() == chunk_rows.numel() &&
                  chunk_contexts.numel() == chunk_rows.numel(),
              "StepLayers: one table row and context length per decode row and per chunk");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous(), "StepLayers: slots must be int64");
  check_float(hidden, "StepLayers: hidden");
  check_float(cos, "StepLayers: cos");
  check_float(sin, "StepLayers: sin");
  const bool decodes = decode_rows.numel() > 0, chunks = chunk_rows.numel() > 0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  float* x = hidden.data_ptr<float>();
  at::Tensor normed = at::empty({rows, width}, hidden.options());
  at::Tensor attended = at::empty({rows, heads_, dim}, hidden.options());
  for (Layer& layer : layers_) {
    rms_norm_rows(normed.data_ptr<float>(), x, layer.input_norm.data_ptr<float>(), rows, width, eps_);
    at::Tensor qkv = product(layer.projections[0], normed);
    rotate_and_store(qkv, cos.data_ptr<float>(), sin.data_ptr<float>(), slots.data_ptr<int64_t>(), layer.k_cache,
                     layer.v_cache, heads_);
    const at::Tensor queries = qkv.view({rows, heads_ + 2 * kv_heads_, dim}).narrow(1, 0, heads_);
    if (decodes) {
      paged_decode_attention(attended, queries, decode_rows, layer.k_cache, layer.v_cache, decode_tables,
                             decode_contexts, scale, window_);
    }
    if (chunks) {
      paged_prefill_attention(attended, queries, layer.k_cache, layer.v_cache, chunk_tables, chunk_rows,
                              chunk_lengths, chunk_contexts, scale, window_);
    }
    add_product(layer.projections[1], attended.view({rows, q_width}), x, width);
    rms_norm_rows(normed.data_ptr<float>(), x, layer.post_norm.data_ptr<float>(), rows, width, eps_);
    const at::Tensor activated = silu_and_mul(product(layer.projections[2], normed));
    add_product(layer.projections[3], activated, x, width);
  }
}

at::Tensor StepLayers::product(const Projection& p, const at::Tensor& x) const {
  const int64_t rows = x.size(0), in = x.size(1), out = p.weight.size(0);
  if (rows > small_rows_) return onednn_product(x, p.packed, p.bias);
  at::Tensor y = at::empty({rows, out}, x.options());
  small_batch_product(y.data_ptr<float>(), out, x.data_ptr<float>(), in, p.weight.data_ptr<float>(), p.bias_data(),
                      rows, in, out, false);
  return y;
}

void StepLayers::add_product(const Projection& p, const at::Tensor& x, float* residual, int64_t stride) const {
  const int64_t rows = x.size(0), in = x.size(1), out = p.weight.size(0);
  if (rows <= small_rows_) {
    small_batch_product(residual, stride, x.data_ptr<float>(), in, p.weight.data_ptr<float>(), p.bias_data(), rows,
                        in, out, true);
    return;
  }
  const at::Tensor y = onednn_product(x, p.packed, p.bias);
  const float* ys = y.data_ptr<float>();
  for_each_row(rows, [&](int64_t r) {
    for (int64_t i = 0; i < out; ++i) residual[r * stride + i] += ys[r * out + i];
  });
}

}  // namespace tokenworks
