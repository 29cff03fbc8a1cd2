// CPU kernels for the engine's decode step, where PyTorch's general ops leave speed behind.
//
// linear_small_batch: y = x W^T (+ b) for a few rows of x. A decode step of a few sequences
//   is memory-bound: every weight is read once per step. Splitting the output rows across
//   threads lets each stream its own contiguous run of the weight matrix, with x in L1: on
//   the benchmark's small model (2 threads of an AVX-512 EPYC) one row reads the weights at
//   43-60 GB/s where oneDNN's inner product reaches 31-40 (linear.py has the figures).
// paged_decode_attention: one query token per sequence, attending to its keys and values
//   where they lie in the paged cache. The PyTorch path first copies every sequence's blocks
//   into a contiguous buffer and then reads that copy; this reads the cache in place, once,
//   prefetching each next block.
// DecodeLayers: every decoder layer of a decode-only step in one call, the two above (or
//   oneDNN's products, for more rows) with plain loops (norms, rotary, cache writes, SwiGLU).
//
// All use ATen's parallel_for, so they run on torch's own OpenMP threads and follow
// torch.set_num_threads. Built with -O3 -march=native for the CPU it runs on: the loops
// become that CPU's widest vector instructions, and the dot product takes AVX-512 or AVX2
// intrinsics where the CPU has them.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// Sum of a[i] * b[i]. Compilers vectorize the products but not the final sum across the
// vector's lanes (they spill it to memory and add one float at a time, which costs more than
// the products for a 64-wide head), so on x86 the lanes are added in registers with
// intrinsics; elsewhere a portable loop of 16 lanes.
#if defined(__AVX512F__)
#include <immintrin.h>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  if (i + 16 <= n) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    i += 16;
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  const __m256 both = _mm256_add_ps(acc0, acc1);
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(both), _mm256_extractf128_ps(both, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  float sum = _mm_cvtss_f32(half);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#else
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  constexpr int64_t kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int64_t half = kLanes / 2; half > 0; half /= 2) {
    for (int64_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  }
  float sum = acc[0];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#endif

// x[i] = exp(x[i]) for x[i] <= 0, written so that it vectorizes (std::exp is a scalar call):
// exp(x) = 2^n * 2^f with n = round(x log2 e) and |f| <= 1/2, 2^f by its Taylor series to the
// 7th power (relative error below 1e-8, under float32's rounding), 2^n added to the exponent bits.
inline void exp_nonpositive(float* x, int64_t n) {
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  constexpr float c2 = kLn2 * kLn2 / 2, c3 = c2 * kLn2 / 3, c4 = c3 * kLn2 / 4, c5 = c4 * kLn2 / 5,
                  c6 = c5 * kLn2 / 6, c7 = c6 * kLn2 / 7;
  for (int64_t i = 0; i < n; ++i) {
    const float y = std::max(x[i] * kLog2e, -126.0f);  // below 2^-126 the term is 0 beside the max's 1
    const int32_t whole = static_cast<int32_t>(y - 0.5f);  // y <= 0: truncation rounds to nearest
    const float f = y - static_cast<float>(whole);
    const float p = 1.0f + f * (kLn2 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))));
    int32_t bits;
    std::memcpy(&bits, &p, sizeof bits);
    bits += whole * (1 << 23);
    std::memcpy(&x[i], &bits, sizeof bits);
  }
}

// out[i] += scale * v[i]
inline void axpy(float* __restrict out, const float* __restrict v, float scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += scale * v[i];
}

// y[m] (+)= W x[m] + b for `rows` rows: the output rows of W are split across the threads, so
// each streams its own contiguous run of the weights while the few rows of x stay in L1.
// `accumulate` adds to y (a residual connection) instead of overwriting it.
void small_batch_product(float* y, int64_t y_stride, const float* x, int64_t x_stride, const float* w,
                         const float* b, int64_t rows, int64_t in, int64_t out, bool accumulate) {
  // At least ~64 KB of weights per task, so thread start-up never outweighs the work.
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(in, 1));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* row = w + o * in;  // read from memory once; the rows of x stay in L1
      for (int64_t m = 0; m < rows; ++m) {
        const float value = dot(row, x + m * x_stride, in) + (b ? b[o] : 0.0f);
        y[m * y_stride + o] = accumulate ? y[m * y_stride + o] + value : value;
      }
    }
  });
}

const float* optional_data(const c10::optional<at::Tensor>& bias, int64_t size, const char* what) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->is_contiguous() && bias->numel() == size && bias->scalar_type() == at::kFloat, what, ": bias");
  return bias->data_ptr<float>();
}

}  // namespace

// x: (M, in), weight: (out, in), bias: (out,) or None -> (M, out). float32, contiguous rows.
at::Tensor linear_small_batch(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "linear_small_batch: shapes");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "linear_small_batch: float32 only");
  TORCH_CHECK(x.stride(1) == 1 && weight.is_contiguous(), "linear_small_batch: rows must be contiguous");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  at::Tensor y = at::empty({rows, out}, x.options());
  small_batch_product(y.data_ptr<float>(), out, x.data_ptr<float>(), x.stride(0), weight.data_ptr<float>(),
                      optional_data(bias, out, "linear_small_batch"), rows, in, out, false);
  return y;
}

// Decode attention over the paged cache, written into out.
//   q, out: (N, H, D) with unit stride in D and heads D apart; rows: (B,) the token row of each
//   sequence; k_cache, v_cache: (blocks, block_size, K, D) contiguous; block_tables: (B, W)
//   int64; context_lens: (B,) int64, keys 0..len-1 (the last is the token's own); window: keys
//   within `window` positions of the query (<= 0: all). The H query heads form K groups of
//   G = H / K consecutive heads sharing one key/value head.
void paged_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& rows, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& context_lens,
                            double scale, int64_t window) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "paged_decode_attention: float32 only");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && block_tables.is_contiguous() &&
                  context_lens.is_contiguous() && rows.is_contiguous(),
              "paged_decode_attention: cache, tables, lengths and rows must be contiguous");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1 && q.stride(1) == q.size(2) && out.stride(1) == out.size(2),
              "paged_decode_attention: heads must be contiguous within a row");
  const int64_t batch = rows.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2), width = block_tables.size(1);
  TORCH_CHECK(heads % kv_heads == 0 && k_cache.size(3) == dim, "paged_decode_attention: head shapes");
  const int64_t group = heads / kv_heads;  // query heads per key/value head
  const float* qs = q.data_ptr<float>();
  float* os = out.data_ptr<float>();
  const float* ks = k_cache.data_ptr<float>();
  const float* vs = v_cache.data_ptr<float>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lengths = context_lens.data_ptr<int64_t>();
  const int64_t* row_of = rows.data_ptr<int64_t>();
  const int64_t q_stride = q.stride(0), out_stride = out.stride(0);
  const int64_t token_stride = kv_heads * dim;  // floats between consecutive slots of one head

  // A task is one sequence with all its key/value heads, so each token slot (all heads side by
  // side) is read whole and once; with fewer sequences than threads, one head of one sequence.
  const int64_t heads_per_task = batch >= at::get_num_threads() ? kv_heads : 1;
  const int64_t tasks = batch * (kv_heads / heads_per_task);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc, top, total;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (kv_heads / heads_per_task);
      const int64_t first_head = (task % (kv_heads / heads_per_task)) * heads_per_task;
      const int64_t length = lengths[b];
      TORCH_CHECK(length >= 1 && length <= width * block_size, "paged_decode_attention: context length");
      const int64_t first = window > 0 ? std::max<int64_t>(0, length - window) : 0;
      const int64_t count = length - first;
      const int64_t* table = tables + b * width;
      const int64_t rows_here = heads_per_task * group;  // query heads of this task
      const float* query = qs + row_of[b] * q_stride + first_head * group * dim;
      scores.resize(rows_here * count);
      top.assign(rows_here, -std::numeric_limits<float>::infinity());
      total.assign(rows_here, 0.0f);
      acc.assign(rows_here * dim, 0.0f);
      // Visit the slots of positions first..length-1 in order, block by block: f(t, slot of
      // position first + t). No division per token, and each block's slots are contiguous.
      // While a block is read, the same slot of the next block is prefetched: blocks lie
      // anywhere in the cache, so the hardware prefetcher (which follows addresses) cannot
      // foresee the jump, and without this every block starts with a wait for memory (256
      // sequences of 192 tokens in scattered 16-token blocks, 2 threads: 3.17 ms a layer
      // without, 1.31 with; 1.11 when each sequence's blocks are adjacent).
      const int64_t bytes_per_slot = heads_per_task * dim * static_cast<int64_t>(sizeof(float));
      auto for_each_slot = [&](const float* cache, auto&& f) {
        int64_t t = 0;
        for (int64_t block = first / block_size, offset = first % block_size; t < count; ++block, offset = 0) {
          const int64_t end = std::min(count, t + block_size - offset);
          const float* slot = cache + (table[block] * block_size + offset) * token_stride + first_head * dim;
          const bool last = end == count;
          const char* ahead = reinterpret_cast<const char*>(
              cache + (table[last ? block : block + 1] * block_size + offset) * token_stride + first_head * dim);
          for (; t < end; ++t, slot += token_stride, ahead += token_stride * sizeof(float)) {
            if (!last) {
              for (int64_t line = 0; line < bytes_per_slot; line += 64) __builtin_prefetch(ahead + line, 0, 3);
            }
            f(t, slot);
          }
        }
      };
      for_each_slot(ks, [&](int64_t t, const float* key) {
        for (int64_t r = 0; r < rows_here; ++r) {  // query head r reads key head r / group
          const float score = dot(query + r * dim, key + (r / group) * dim, dim) * static_cast<float>(scale);
          scores[r * count + t] = score;
          top[r] = std::max(top[r], score);
        }
      });
      for (int64_t r = 0; r < rows_here; ++r) {
        float* row = scores.data() + r * count;
        for (int64_t t = 0; t < count; ++t) row[t] -= top[r];
        exp_nonpositive(row, count);
        for (int64_t t = 0; t < count; ++t) total[r] += row[t];
      }
      for_each_slot(vs, [&](int64_t t, const float* value) {
        for (int64_t r = 0; r < rows_here; ++r) {
          axpy(acc.data() + r * dim, value + (r / group) * dim, scores[r * count + t], dim);
        }
      });
      float* destination = os + row_of[b] * out_stride + first_head * group * dim;
      for (int64_t r = 0; r < rows_here; ++r) {
        const float inverse = 1.0f / total[r];
        for (int64_t d = 0; d < dim; ++d) destination[r * dim + d] = acc[r * dim + d] * inverse;
      }
    }
  });
}

namespace {

// y = x / sqrt(mean(x^2) + eps) * weight for one row.
void rms_norm_row(float* y, const float* x, const float* weight, int64_t width, float eps) {
  const float inverse = 1.0f / std::sqrt(dot(x, x, width) / static_cast<float>(width) + eps);
  for (int64_t i = 0; i < width; ++i) y[i] = x[i] * inverse * weight[i];
}

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

// f(row) for rows 0..rows-1, on the threads when there are enough rows to share.
template <typename F>
void for_each_row(int64_t rows, const F& f) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

// oneDNN's inner product (torch.ops.mkldnn._linear_pointwise), which reads a plain weight or
// one packed in its blocked layout; looked up in the dispatcher on first use.
at::Tensor onednn_product(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, c10::string_view,
                            c10::List<c10::optional<at::Scalar>>, c10::optional<c10::string_view>)>();
  return op.call(x, weight, bias, "none", c10::List<c10::optional<at::Scalar>>(), c10::string_view(""));
}

void check_float(const at::Tensor& tensor, const char* what) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat && tensor.is_contiguous(), what, " must be contiguous float32");
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

// Every decoder layer of a step whose rows are all decode tokens (one per sequence), in one
// call: plain loops for the norms, rotary, cache writes and SwiGLU around the products and the
// paged attention above. Through PyTorch ops a layer costs ~20 dispatches from Python, which
// weigh most where rows are few (measured: one stream of the benchmark's tiny model ~1,000 ->
// ~1,500 tokens/s; a step of its serving model on one thread, 8 sequences 2.45 -> 2.00 ms, 32
// sequences 5.3 -> 4.9 ms). Products of up to `small_rows` rows take the row-parallel kernel
// on the plain weights; larger ones oneDNN's, on the packed weights where given.
class DecodeLayers {
 public:
  DecodeLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, int64_t window, int64_t small_rows)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(static_cast<float>(eps)), window_(window),
        small_rows_(small_rows) {}

  // matrices, packed, biases: qkv, o, gate_up, down, each (out, in); packed copies and biases
  // may be None. k_cache, v_cache: (blocks, block_size, K, D).
  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, const std::vector<at::Tensor>& matrices,
                 const std::vector<c10::optional<at::Tensor>>& packed,
                 const std::vector<c10::optional<at::Tensor>>& biases, const at::Tensor& k_cache,
                 const at::Tensor& v_cache) {
    TORCH_CHECK(matrices.size() == 4 && packed.size() == 4 && biases.size() == 4,
                "DecodeLayers: qkv, o, gate_up and down");
    const int64_t hidden = input_norm.numel(), q_width = heads_ * head_dim_;
    const int64_t intermediate = matrices[3].size(1);
    const int64_t shapes[4][2] = {{q_width + 2 * kv_heads_ * head_dim_, hidden},
                                  {hidden, q_width},
                                  {2 * intermediate, hidden},
                                  {hidden, intermediate}};
    Layer layer{input_norm, post_norm, {}, k_cache, v_cache};
    for (int i = 0; i < 4; ++i) {
      check_float(matrices[i], "DecodeLayers: every weight matrix");
      TORCH_CHECK(matrices[i].size(0) == shapes[i][0] && matrices[i].size(1) == shapes[i][1],
                  "DecodeLayers: layer shapes");
      if (biases[i].has_value()) check_float(*biases[i], "DecodeLayers: every bias");
      TORCH_CHECK(!biases[i].has_value() || biases[i]->numel() == shapes[i][0], "DecodeLayers: bias shapes");
      layer.projections[i] = {matrices[i], packed[i].value_or(matrices[i]), biases[i]};
    }
    for (const at::Tensor* t : {&input_norm, &post_norm, &k_cache, &v_cache}) check_float(*t, "DecodeLayers: norms and caches");
    TORCH_CHECK(post_norm.numel() == hidden && k_cache.size(2) == kv_heads_ && k_cache.size(3) == head_dim_,
                "DecodeLayers: norm and cache shapes");
    layers_.push_back(std::move(layer));
  }

  // hidden: (N, hidden), updated in place through every layer; slots: (N,) int64 cache slot of
  // each row's token; cos, sin: (N, D); block_tables: (N, W) int64; context_lens: (N,) int64.
  void forward(at::Tensor& hidden, const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin,
               const at::Tensor& block_tables, const at::Tensor& context_lens) {
    const int64_t rows = hidden.size(0), width = hidden.size(1), dim = head_dim_, q_width = heads_ * dim;
    TORCH_CHECK(context_lens.numel() == rows && slots.numel() == rows && cos.size(0) == rows && cos.size(1) == dim &&
                    sin.sizes() == cos.sizes(),
                "DecodeLayers: one context length, slot and rotation per row");
    TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous(), "DecodeLayers: slots must be int64");
    check_float(hidden, "DecodeLayers: hidden");
    check_float(cos, "DecodeLayers: cos");
    check_float(sin, "DecodeLayers: sin");
    float* x = hidden.data_ptr<float>();
    at::Tensor normed = at::empty({rows, width}, hidden.options());
    at::Tensor attended = at::empty({rows, heads_, dim}, hidden.options());
    const at::Tensor row_ids = at::arange(rows, slots.options());
    for (Layer& layer : layers_) {
      for_each_row(rows, [&](int64_t r) {
        rms_norm_row(normed.data_ptr<float>() + r * width, x + r * width, layer.input_norm.data_ptr<float>(), width,
                     eps_);
      });
      at::Tensor qkv = product(layer.projections[0], normed);
      rotate_and_store(qkv, cos.data_ptr<float>(), sin.data_ptr<float>(), slots.data_ptr<int64_t>(), layer.k_cache,
                       layer.v_cache, heads_);
      const at::Tensor queries = qkv.view({rows, heads_ + 2 * kv_heads_, dim}).narrow(1, 0, heads_);
      paged_decode_attention(attended, queries, row_ids, layer.k_cache, layer.v_cache, block_tables, context_lens,
                             1.0 / std::sqrt(static_cast<double>(dim)), window_);
      add_product(layer.projections[1], attended.view({rows, q_width}), x, width);
      for_each_row(rows, [&](int64_t r) {
        rms_norm_row(normed.data_ptr<float>() + r * width, x + r * width, layer.post_norm.data_ptr<float>(), width,
                     eps_);
      });
      const at::Tensor activated = silu_and_mul(product(layer.projections[2], normed));
      add_product(layer.projections[3], activated, x, width);
    }
  }

 private:
  struct Projection {
    at::Tensor weight, packed;  // packed: oneDNN's blocked copy, or the weight itself
    c10::optional<at::Tensor> bias;
    const float* bias_data() const { return bias.has_value() ? bias->data_ptr<float>() : nullptr; }
  };
  struct Layer {
    at::Tensor input_norm, post_norm;
    Projection projections[4];  // qkv, o, gate_up, down
    at::Tensor k_cache, v_cache;
  };

  // x W^T + b for the rows of x: (N, in) -> (N, out).
  at::Tensor product(const Projection& p, const at::Tensor& x) const {
    const int64_t rows = x.size(0), in = x.size(1), out = p.weight.size(0);
    if (rows > small_rows_) return onednn_product(x, p.packed, p.bias);
    at::Tensor y = at::empty({rows, out}, x.options());
    small_batch_product(y.data_ptr<float>(), out, x.data_ptr<float>(), in, p.weight.data_ptr<float>(), p.bias_data(),
                        rows, in, out, false);
    return y;
  }

  // residual (N, out, rows `stride` apart) += x W^T + b: the small kernel adds in place.
  void add_product(const Projection& p, const at::Tensor& x, float* residual, int64_t stride) const {
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

  int64_t heads_, kv_heads_, head_dim_;
  float eps_;
  int64_t window_, small_rows_;
  std::vector<Layer> layers_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_small_batch", &linear_small_batch, "x W^T + b for a few rows of x (float32, CPU)");
  m.def("paged_decode_attention", &paged_decode_attention, "one-token attention over the paged KV cache (float32, CPU)");
  pybind11::class_<DecodeLayers>(m, "DecodeLayers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, int64_t, int64_t>())
      .def("add_layer", &DecodeLayers::add_layer)
      .def("forward", &DecodeLayers::forward);
}
