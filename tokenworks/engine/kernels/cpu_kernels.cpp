// CPU kernels for the engine's decode step, where PyTorch's general ops leave speed behind.
//
// linear_small_batch: y = x W^T (+ b) for a few rows of x. A decode step of a few sequences
//   is memory-bound: every weight is read once per step. Splitting the output rows across
//   threads lets each stream its own contiguous run of the weight matrix, with x in L1: on
//   the benchmark's small model (2 threads of an AVX-512 EPYC) one row reads the weights at
//   43-60 GB/s where oneDNN's inner product reaches 31-40 (linear.py has the figures).
// paged_decode_attention: one query token per sequence, attending to its keys and values
//   where they lie in the paged cache. The PyTorch path first copies every sequence's blocks
//   into a contiguous buffer and then reads that copy; this reads the cache in place, once.
//
// Both use ATen's parallel_for, so they run on torch's own OpenMP threads and follow
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

}  // namespace

// x: (M, in), weight: (out, in), bias: (out,) or None -> (M, out). float32, contiguous rows.
at::Tensor linear_small_batch(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "linear_small_batch: shapes");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "linear_small_batch: float32 only");
  TORCH_CHECK(x.stride(1) == 1 && weight.is_contiguous(), "linear_small_batch: rows must be contiguous");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0), x_stride = x.stride(0);
  at::Tensor y = at::empty({rows, out}, x.options());
  const float* w = weight.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == out && bias->scalar_type() == at::kFloat, "linear_small_batch: bias");
    b = bias->data_ptr<float>();
  }
  // At least ~64 KB of weights per task, so thread start-up never outweighs the work.
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(in, 1));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* row = w + o * in;  // read from memory once; the rows of x stay in L1
      for (int64_t m = 0; m < rows; ++m) ys[m * out + o] = dot(row, xs + m * x_stride, in) + (b ? b[o] : 0.0f);
    }
  });
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
      auto for_each_slot = [&](const float* cache, auto&& f) {
        int64_t t = 0;
        for (int64_t block = first / block_size, offset = first % block_size; t < count; ++block, offset = 0) {
          const float* slot = cache + (table[block] * block_size + offset) * token_stride + first_head * dim;
          for (const int64_t end = std::min(count, t + block_size - offset); t < end; ++t, slot += token_stride) {
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_small_batch", &linear_small_batch, "x W^T + b for a few rows of x (float32, CPU)");
  m.def("paged_decode_attention", &paged_decode_attention, "one-token attention over the paged KV cache (float32, CPU)");
}
