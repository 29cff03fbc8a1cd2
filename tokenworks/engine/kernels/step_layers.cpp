// StepLayers' methods (the class and why it exists: step_layers.h) and the plain loops of a
// layer between its products and attention: rotary, cache writes and SwiGLU.

#include "step_layers.h"

#include "cpu_kernels.h"
#include "vectors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
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

// One piece of a LoRA adapter for M rows of one adapter at once (a tile of the step): t = x A^T
// for each row, then y += t B_t. A comes transposed (in x rank), so a vector's worth of ranks of
// t builds up in one register per row from a row of A^T and the row's inputs, with no sums across
// lanes; then each vector-wide block of the M rows of y stays in registers through the rank's
// rows of B_t. Each row of A^T and of B_t is read once for the M rows. rank: a multiple of
// kLanes (zero-padded).
template <int M>
void lora_tile(float* y, int64_t y_stride, const float* x, int64_t in, const int64_t* rows, const float* a_t,
               const float* b_t, int64_t rank, int64_t width) {
  float t[M][StepLayers::kMaxLoraRank];
  const float* xs[M];
  float* ys[M];
  for (int m = 0; m < M; ++m) {
    xs[m] = x + rows[m] * in;
    ys[m] = y + rows[m] * y_stride;
  }
  for (int64_t k = 0; k < rank; k += kLanes) {
    Vec acc[M] = {};
    for (int64_t i = 0; i < in; ++i) {
      const Vec column = load(a_t + i * rank + k);
      for (int m = 0; m < M; ++m) acc[m] += column * xs[m][i];
    }
    for (int m = 0; m < M; ++m) store(t[m] + k, acc[m]);
  }
  int64_t o = 0;
  for (; o + kLanes <= width; o += kLanes) {
    Vec acc[M];
    for (int m = 0; m < M; ++m) acc[m] = load(ys[m] + o);
    for (int64_t k = 0; k < rank; ++k) {
      const Vec weights = load(b_t + k * width + o);
      for (int m = 0; m < M; ++m) acc[m] += t[m][k] * weights;
    }
    for (int m = 0; m < M; ++m) store(ys[m] + o, acc[m]);
  }
  for (; o < width; ++o) {
    for (int m = 0; m < M; ++m) {
      for (int64_t k = 0; k < rank; ++k) ys[m][o] += t[m][k] * b_t[k * width + o];
    }
  }
}

using LoraTileKernel = void (*)(float*, int64_t, const float*, int64_t, const int64_t*, const float*, const float*,
                                int64_t, int64_t);
constexpr LoraTileKernel kLoraTileKernels[] = {nullptr,       lora_tile<1>, lora_tile<2>, lora_tile<3>, lora_tile<4>,
                                               lora_tile<5>, lora_tile<6>, lora_tile<7>, lora_tile<8>};
static_assert(sizeof(kLoraTileKernels) / sizeof(kLoraTileKernels[0]) == StepLayers::kLoraTileRows + 1,
              "a kernel for every tile size");

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
                         const at::Tensor& chunk_tables, const at::Tensor& row_adapters) {
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
  set_row_adapters(row_adapters, rows);
  at::Tensor normed = at::empty({rows, width}, hidden.options());
  at::Tensor attended = at::empty({rows, heads_, dim}, hidden.options());
  for (int64_t index = 0; index < static_cast<int64_t>(layers_.size()); ++index) {
    Layer& layer = layers_[index];
    rms_norm_rows(normed.data_ptr<float>(), x, layer.input_norm.data_ptr<float>(), rows, width, eps_);
    at::Tensor qkv = product(layer.projections[0], normed);
    add_adapters(index, 0, normed, qkv.data_ptr<float>(), qkv.size(1));
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
    const at::Tensor heads_out = attended.view({rows, q_width});
    add_product(layer.projections[1], heads_out, x, width);
    add_adapters(index, 1, heads_out, x, width);
    rms_norm_rows(normed.data_ptr<float>(), x, layer.post_norm.data_ptr<float>(), rows, width, eps_);
    at::Tensor gate_up = product(layer.projections[2], normed);
    add_adapters(index, 2, normed, gate_up.data_ptr<float>(), gate_up.size(1));
    const at::Tensor activated = silu_and_mul(gate_up);
    add_product(layer.projections[3], activated, x, width);
    add_adapters(index, 3, activated, x, width);
  }
  lora_tiles_.clear();
}

void StepLayers::add_adapter_piece(int64_t key, int64_t layer, int64_t product, const at::Tensor& a,
                                   const at::Tensor& b_t, int64_t offset) {
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(layers_.size()) && product >= 0 && product < 4,
              "StepLayers: an adapter piece's layer and product");
  check_float(a, "StepLayers: lora A");
  check_float(b_t, "StepLayers: lora B");
  const at::Tensor& weight = layers_[layer].projections[product].weight;
  const int64_t rank = a.size(0);
  TORCH_CHECK(a.dim() == 2 && b_t.dim() == 2 && b_t.size(0) == rank && rank <= kMaxLoraRank &&
                  a.size(1) == weight.size(1) && offset >= 0 && offset + b_t.size(1) <= weight.size(0),
              "StepLayers: adapter piece shapes (rank at most ", kMaxLoraRank, ")");
  // The tile kernel's layout: A transposed, the rank zero-padded to whole vectors (vectors.h's;
  // the padding adds nothing: its rows of B_t are zero).
  const int64_t padded = (rank + kLanes - 1) / kLanes * kLanes;
  at::Tensor a_t = at::zeros({a.size(1), padded}, a.options());
  a_t.narrow(1, 0, rank).copy_(a.t());
  at::Tensor b_padded = at::zeros({padded, b_t.size(1)}, b_t.options());
  b_padded.narrow(0, 0, rank).copy_(b_t);
  Adapter& adapter = adapters_[key];
  adapter.resize(layers_.size() * 4);
  adapter[layer * 4 + product].push_back({a_t, b_padded, offset});
}

void StepLayers::remove_adapter(int64_t key) { adapters_.erase(key); }

void StepLayers::set_row_adapters(const at::Tensor& row_adapters, int64_t rows) {
  lora_tiles_.clear();
  if (row_adapters.numel() == 0) return;
  TORCH_CHECK(row_adapters.numel() == rows && row_adapters.scalar_type() == at::kLong && row_adapters.is_contiguous(),
              "StepLayers: one int64 adapter key per row");
  const int64_t* keys = row_adapters.data_ptr<int64_t>();
  std::vector<std::pair<const Adapter*, std::vector<int64_t>>> groups;  // few: a linear search finds each
  for (int64_t r = 0; r < rows; ++r) {
    if (keys[r] < 0) continue;
    const auto found = adapters_.find(keys[r]);
    TORCH_CHECK(found != adapters_.end(), "StepLayers: no adapter with key ", keys[r]);
    auto group = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == &found->second; });
    if (group == groups.end()) group = groups.insert(groups.end(), {&found->second, {}});
    group->second.push_back(r);
  }
  for (auto& [adapter, members] : groups) {
    for (size_t first = 0; first < members.size(); first += kLoraTileRows) {
      const size_t last = std::min(members.size(), first + kLoraTileRows);
      lora_tiles_.push_back({adapter, std::vector<int64_t>(members.begin() + first, members.begin() + last)});
    }
  }
}

// y (N rows `stride` apart) += x A^T B_t, for each row's adapter's pieces of this product. A tile's
// rows (up to 8 of one adapter) go through each piece together (lora_tile); the tiles share the
// threads. Prefills too: on the benchmark's tiny model with adapters on all seven projections,
// 2,048 prompt rows of 4 adapters took the step 75 -> 85 ms this way, and 75 -> 122 ms through
// four matrix products (index_select, two mm, index_add_) per adapter and piece.
void StepLayers::add_adapters(int64_t layer, int product, const at::Tensor& x, float* y, int64_t stride) const {
  const int64_t in = x.size(1);
  if (lora_tiles_.empty()) return;
  const float* xs = x.data_ptr<float>();
  // Threads only for work that outweighs waking them: a decode step of the benchmark's tiny model
  // with 32 rows of 4 adapters has ~80k multiply-adds a product, a few microseconds on one core.
  const auto& first = (*lora_tiles_.front().adapter)[layer * 4 + product];
  int64_t per_tile = 0;
  for (const LoraPiece& piece : first) per_tile += kLoraTileRows * piece.a_t.size(1) * (in + piece.b_t.size(1));
  const int64_t grain = std::max<int64_t>(1, kLoraParallelWork / std::max<int64_t>(per_tile, 1));
  parallel_for(0, static_cast<int64_t>(lora_tiles_.size()), grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const LoraTile& tile = lora_tiles_[i];
      const LoraTileKernel kernel = kLoraTileKernels[tile.rows.size()];
      for (const LoraPiece& piece : (*tile.adapter)[layer * 4 + product]) {
        kernel(y + piece.offset, stride, xs, in, tile.rows.data(), piece.a_t.data_ptr<float>(),
               piece.b_t.data_ptr<float>(), piece.a_t.size(1), piece.b_t.size(1));
      }
    }
  });
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
