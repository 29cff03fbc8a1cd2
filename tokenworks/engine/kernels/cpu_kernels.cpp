// CPU kernels for the engine's steps, where PyTorch's general ops leave speed behind.
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
// paged_prefill_attention: the causal attention of prompts (or chunks of them) over the paged
//   cache, flash-attention style, in tiles of 64 query rows and 32 keys.
// StepLayers: every decoder layer of a step in one call, the kernels above (and oneDNN's
//   products, for more rows) with plain loops (norms, rotary, cache writes, SwiGLU).
// greedy_tokens: argmax of each row of logits, at the speed of reading them.
// rms_norm: the model's final norm of the rows that sample, in one call.
//
// All use ATen's parallel_for, so they run on torch's own OpenMP threads and follow
// torch.set_num_threads. Built with -O3 -march=native for the CPU it runs on: the loops
// become that CPU's widest vector instructions, and the dot product takes AVX-512 or AVX2
// intrinsics where the CPU has them.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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

// Sixteen floats (and int32s), with GCC's and Clang's vector extensions: one AVX-512 register,
// two AVX2 or four NEON ones. Loops written on these vectorize on every CPU, where the compiler
// leaves plain loops with selects, maxima or bit casts in them scalar.
typedef float Vec __attribute__((vector_size(64)));
typedef int32_t IntVec __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;
inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof v); }
inline Vec maximum(const Vec& a, const Vec& b) { return a > b ? a : b; }

// exp(x) for x <= 0 (std::exp is a scalar call): exp(x) = 2^n * 2^f with n = round(x log2 e)
// and |f| <= 1/2, 2^f by its Taylor series to the 7th power (relative error below 1e-8, under
// float32's rounding), 2^n added to the exponent bits. Below 2^-126 (a masked key's -inf
// included) the result is 0: nothing beside a softmax's largest term, which is 1.
inline Vec exp_nonpositive(const Vec& x) {
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  constexpr float c2 = kLn2 * kLn2 / 2, c3 = c2 * kLn2 / 3, c4 = c3 * kLn2 / 4, c5 = c4 * kLn2 / 5,
                  c6 = c5 * kLn2 / 6, c7 = c6 * kLn2 / 7;
  const Vec unclamped = x * kLog2e;
  const Vec y = maximum(unclamped, Vec{} - 126.0f);
  const IntVec whole = __builtin_convertvector(y - 0.5f, IntVec);  // y <= 0: truncation rounds to nearest
  const Vec f = y - __builtin_convertvector(whole, Vec);
  const Vec p = 1.0f + f * (kLn2 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))));
  const IntVec bits = (IntVec)p + whole * (1 << 23);  // a cast between vector types keeps the bits
  return (Vec)(unclamped < -126.0f ? IntVec{} : bits);
}

// x[i] = exp(x[i]) for x[i] <= 0.
inline void exp_nonpositive(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(x + i, exp_nonpositive(load(x + i)));
  if (i < n) {
    float tail[kLanes] = {};
    std::memcpy(tail, x + i, (n - i) * sizeof(float));
    store(tail, exp_nonpositive(load(tail)));
    std::memcpy(x + i, tail, (n - i) * sizeof(float));
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

namespace {

// Every block id of the tables names a block of the cache, and every row one of the step's:
// checked before the threads start, so a bad table is an error rather than a wild read.
void check_rows_and_tables(const at::Tensor& block_tables, int64_t num_blocks, const int64_t* first_rows,
                           const int64_t* counts, int64_t entries, int64_t num_rows, const char* what) {
  const int64_t* ids = block_tables.data_ptr<int64_t>();
  for (int64_t i = 0; i < block_tables.numel(); ++i) {
    TORCH_CHECK(ids[i] >= 0 && ids[i] < num_blocks, what, ": block id ", ids[i], " outside the cache");
  }
  for (int64_t i = 0; i < entries; ++i) {
    const int64_t count = counts ? counts[i] : 1;
    TORCH_CHECK(first_rows[i] >= 0 && first_rows[i] + count <= num_rows, what, ": rows outside the step's");
  }
}

// How far ahead of the slot it reads decode attention prefetches: about 6 KiB (8 slots of the
// small model's three 64-wide heads, 12 of tiny's two). Nearer, the data is not there in time;
// much further, it is evicted from L1 before use (256 sequences of 192 tokens in scattered
// 128-token blocks, small model: 4, 8, 12 and 16 slots ahead read 1.24, 1.28, 1.25 and 1.20x
// as fast as the 16-token blocks read with the next block's slot prefetched).
constexpr int64_t kPrefetchBytes = 6144;

}  // namespace

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
  TORCH_CHECK(out.sizes() == q.sizes(), "paged_decode_attention: out must have the queries' shape");
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
  TORCH_CHECK(block_tables.size(0) == batch && context_lens.numel() == batch,
              "paged_decode_attention: one table and length per row");
  check_rows_and_tables(block_tables, k_cache.size(0), row_of, nullptr, batch, q.size(0), "paged_decode_attention");

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
      // With each slot, the slot kPrefetchBytes on in the sequence is prefetched, through the
      // block table: blocks lie anywhere in the cache, so the hardware prefetcher (which
      // follows addresses) cannot foresee the jump to a sequence's next block, and without
      // this every block starts with a wait for memory (256 sequences of 192 tokens in
      // scattered 16-token blocks, 2 threads: 3.17 ms a layer without, 1.31 with; 1.11 when
      // each sequence's blocks are adjacent).
      const int64_t bytes_per_slot = heads_per_task * dim * static_cast<int64_t>(sizeof(float));
      const int64_t ahead_slots = std::min(block_size, (kPrefetchBytes + bytes_per_slot - 1) / bytes_per_slot);
      auto for_each_slot = [&](const float* cache, auto&& f) {
        const float* base = cache + first_head * dim;
        int64_t ahead_block = (first + ahead_slots) / block_size, ahead_offset = (first + ahead_slots) % block_size;
        int64_t t = 0;
        for (int64_t block = first / block_size, offset = first % block_size; t < count; ++block, offset = 0) {
          const int64_t end = std::min(count, t + block_size - offset);
          const float* slot = base + (table[block] * block_size + offset) * token_stride;
          for (; t < end; ++t, slot += token_stride) {
            if (t + ahead_slots < count) {
              const char* ahead =
                  reinterpret_cast<const char*>(base + (table[ahead_block] * block_size + ahead_offset) * token_stride);
              for (int64_t line = 0; line < bytes_per_slot; line += 64) __builtin_prefetch(ahead + line, 0, 3);
            }
            if (++ahead_offset == block_size) ahead_offset = 0, ++ahead_block;
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

// A prefill task's query rows (its positions x the query heads of one key/value head): four
// vectors, so one column of the transposed queries sits in four registers.
constexpr int64_t kRowBlock = 4 * kLanes;
constexpr int64_t kKeyTile = 32;  // keys scored, softmaxed and summed at a time
constexpr float kInfinity = std::numeric_limits<float>::infinity();

// scores[k][r] = scale * (queries[r] . key_k) for kKeys keys and the kRowBlock rows, from the
// transposed queries qt: (dim, kRowBlock). A key's element is broadcast against the four query
// vectors: 4 kKeys multiply-adds per 4 loads, the accumulators in registers.
template <int kKeys>
void score_keys(float* scores, const float* qt, const float* const* keys, int64_t dim, float scale) {
  Vec acc[kKeys][4] = {};
  for (int64_t d = 0; d < dim; ++d) {
    const float* column = qt + d * kRowBlock;
    const Vec q0 = load(column), q1 = load(column + kLanes), q2 = load(column + 2 * kLanes),
              q3 = load(column + 3 * kLanes);
#pragma GCC unroll 4
    for (int k = 0; k < kKeys; ++k) {
      const float element = keys[k][d];
      acc[k][0] += element * q0;
      acc[k][1] += element * q1;
      acc[k][2] += element * q2;
      acc[k][3] += element * q3;
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < kKeys; ++k) {
    for (int v = 0; v < 4; ++v) store(scores + k * kRowBlock + v * kLanes, acc[k][v] * scale);
  }
}

// out[r][slice] += sum_j weights[j][r] * values_j[slice] for four rows r0..r0+3, where the
// slice is kVecs vectors of the head dimension, starting at `offset`.
template <int kVecs>
void accumulate_values(float* out, int64_t out_stride, const float* weights, const float* const* values,
                       int64_t count, int64_t offset) {
  Vec acc[4][kVecs];
  for (int r = 0; r < 4; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = load(out + r * out_stride + offset + v * kLanes);
  }
  for (int64_t j = 0; j < count; ++j) {
    Vec value[kVecs];
    for (int v = 0; v < kVecs; ++v) value[v] = load(values[j] + offset + v * kLanes);
    const float* w = weights + j * kRowBlock;
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      for (int v = 0; v < kVecs; ++v) acc[r][v] += w[r] * value[v];
    }
  }
  for (int r = 0; r < 4; ++r) {
    for (int v = 0; v < kVecs; ++v) store(out + r * out_stride + offset + v * kLanes, acc[r][v]);
  }
}

// One task of prefill attention: tokens begin..end-1 of one chunk, with the query heads of one
// key/value head, over every key they see. Flash-attention style: a running max and sum per
// row, so the scores of only one tile of keys are held at a time.
struct PrefillTask {
  int64_t chunk, kv_head, begin, end;  // tokens begin..end-1 of the chunk
};

}  // namespace

// Attention of prefill chunks (prompts or their pieces) over the paged cache, written into out;
// the chunks' own keys and values are already in the cache, so a chunk after a cached prefix or
// an earlier chunk reads both the same way.
//   q, out: (N, H, D) as in decode; block_tables: (C, W) int64; first_rows: (C,) the step's row
//   of each chunk's first token; lengths: (C,) its tokens; context_lens: (C,) keys up to and
//   including its last token, so its first token sits at position context - length. A query
//   at position p attends keys 0..p (p - window + 1..p with a window > 0). D a multiple of 16.
void paged_prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& first_rows,
                             const at::Tensor& lengths, const at::Tensor& context_lens, double scale, int64_t window) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "paged_prefill_attention: float32 only");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && block_tables.is_contiguous() &&
                  first_rows.is_contiguous() && lengths.is_contiguous() && context_lens.is_contiguous(),
              "paged_prefill_attention: cache, tables, rows and lengths must be contiguous");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1 && q.stride(1) == q.size(2) && out.stride(1) == out.size(2),
              "paged_prefill_attention: heads must be contiguous within a row");
  TORCH_CHECK(out.sizes() == q.sizes(), "paged_prefill_attention: out must have the queries' shape");
  const int64_t heads = q.size(1), dim = q.size(2), chunks = first_rows.numel();
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2), width = block_tables.size(1);
  TORCH_CHECK(heads % kv_heads == 0 && k_cache.size(3) == dim && dim % kLanes == 0 && heads / kv_heads <= kRowBlock,
              "paged_prefill_attention: head shapes (head size a multiple of 16, at most 64 query heads per key head)");
  const int64_t group = heads / kv_heads;
  const float* qs = q.data_ptr<float>();
  float* os = out.data_ptr<float>();
  const float* ks = k_cache.data_ptr<float>();
  const float* vs = v_cache.data_ptr<float>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t *row_of = first_rows.data_ptr<int64_t>(), *length_of = lengths.data_ptr<int64_t>(),
                *context_of = context_lens.data_ptr<int64_t>();
  const int64_t q_stride = q.stride(0), out_stride = out.stride(0), token_stride = kv_heads * dim;
  TORCH_CHECK(block_tables.size(0) == chunks && lengths.numel() == chunks && context_lens.numel() == chunks,
              "paged_prefill_attention: one table, length and context per chunk");
  check_rows_and_tables(block_tables, k_cache.size(0), row_of, length_of, chunks, q.size(0), "paged_prefill_attention");

  // Tasks: each chunk cut into equal runs of at most kRowBlock / group tokens, per key/value
  // head; the most costly (most keys) first, taken one at a time by whichever thread is free,
  // since a causal chunk's last run reads every key and its first run few.
  std::vector<PrefillTask> tasks;
  const int64_t most = kRowBlock / group;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t length = length_of[c];
    TORCH_CHECK(length >= 1 && length <= context_of[c] && context_of[c] <= width * block_size,
                "paged_prefill_attention: chunk lengths");
    const int64_t runs = (length + most - 1) / most, per_run = (length + runs - 1) / runs;
    for (int64_t begin = 0; begin < length; begin += per_run) {
      for (int64_t h = 0; h < kv_heads; ++h) tasks.push_back({c, h, begin, std::min(length, begin + per_run)});
    }
  }
  auto last_key = [&](const PrefillTask& t) { return context_of[t.chunk] - length_of[t.chunk] + t.end; };
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const PrefillTask& a, const PrefillTask& b) { return last_key(a) > last_key(b); });

  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(tasks.size()));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> qt(dim * kRowBlock), scores(kKeyTile * kRowBlock), acc(kRowBlock * dim);
    float top[kRowBlock], total[kRowBlock], rescale[kRowBlock];
    int32_t position[kRowBlock];
    const float *key_at[kKeyTile], *value_at[kKeyTile];
    for (int64_t index = next++; index < static_cast<int64_t>(tasks.size()); index = next++) {
      const PrefillTask& task = tasks[index];
      const int64_t start = context_of[task.chunk] - length_of[task.chunk];  // position of the chunk's first token
      const int64_t* table = tables + task.chunk * width;
      const int64_t rows = (task.end - task.begin) * group;
      // Transposed queries, row r = (token, head within the group); rows past `rows` (the last
      // task of a chunk may have fewer) stay zero and are never written out.
      std::fill(qt.begin(), qt.end(), 0.0f);
      for (int64_t r = 0; r < kRowBlock; ++r) position[r] = std::numeric_limits<int32_t>::max();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = task.begin + r / group, head = task.kv_head * group + r % group;
        const float* query = qs + (row_of[task.chunk] + token) * q_stride + head * dim;
        for (int64_t d = 0; d < dim; ++d) qt[d * kRowBlock + r] = query[d];
        position[r] = static_cast<int32_t>(start + token);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(top, top + kRowBlock, -kInfinity);
      std::fill(total, total + kRowBlock, 0.0f);
      const int64_t first_query = start + task.begin, last_query = start + task.end - 1;
      const int64_t first_key = window > 0 ? std::max<int64_t>(0, first_query - window + 1) : 0;
      for (int64_t tile = first_key; tile <= last_query; tile += kKeyTile) {
        const int64_t count = std::min(kKeyTile, last_query + 1 - tile);
        for (int64_t j = 0; j < count; ++j) {
          const int64_t p = tile + j;
          const int64_t offset = (table[p / block_size] * block_size + p % block_size) * token_stride + task.kv_head * dim;
          key_at[j] = ks + offset;
          value_at[j] = vs + offset;
        }
        int64_t j = 0;
        for (; j + 4 <= count; j += 4) score_keys<4>(scores.data() + j * kRowBlock, qt.data(), key_at + j, dim, scale);
        for (; j < count; ++j) score_keys<1>(scores.data() + j * kRowBlock, qt.data(), key_at + j, dim, scale);
        // Keys after a row's token (or before its window) score -inf, which the exponential
        // turns into 0; only tiles that reach past the first query or behind the last one's
        // window have any.
        if (tile + count - 1 > first_query || (window > 0 && tile <= last_query - window)) {
          const int32_t reach = window > 0 ? static_cast<int32_t>(window) : std::numeric_limits<int32_t>::max();
          for (int64_t k = 0; k < count; ++k) {
            const int32_t key = static_cast<int32_t>(tile + k);
            for (int64_t v = 0; v < kRowBlock; v += kLanes) {
              IntVec query;
              std::memcpy(&query, position + v, sizeof query);
              float* row = scores.data() + k * kRowBlock + v;
              store(row, (query >= key) & (query - key < reach) ? load(row) : Vec{} - kInfinity);
            }
          }
        }
        // Online softmax, 16 rows at a time: the new running max, what the sums so far are worth
        // against it, and the tile's weights e^(score - max) in place of its scores.
        for (int64_t v = 0; v < kRowBlock; v += kLanes) {
          const Vec before = load(top + v);
          Vec highest = before;
          for (int64_t k = 0; k < count; ++k) highest = maximum(highest, load(scores.data() + k * kRowBlock + v));
          // A row with no key seen yet shifts by 0, so -inf - shift stays -inf (never NaN).
          const Vec shift = highest == -kInfinity ? Vec{} : highest;
          const Vec keep = exp_nonpositive(before - shift);
          Vec sum = load(total + v) * keep;
          for (int64_t k = 0; k < count; ++k) {
            float* row = scores.data() + k * kRowBlock + v;
            const Vec weight = exp_nonpositive(load(row) - shift);
            store(row, weight);
            sum += weight;
          }
          store(top + v, highest);
          store(total + v, sum);
          store(rescale + v, keep);
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* out_row = acc.data() + r * dim;
          for (int64_t d = 0; d < dim; ++d) out_row[d] *= rescale[r];
        }
        for (int64_t r = 0; r < rows; r += 4) {
          for (int64_t offset = 0; offset < dim; offset += 4 * kLanes) {
            float* out_rows = acc.data() + r * dim;
            const float* weights = scores.data() + r;
            switch (std::min<int64_t>(4, (dim - offset) / kLanes)) {
              case 4: accumulate_values<4>(out_rows, dim, weights, value_at, count, offset); break;
              case 3: accumulate_values<3>(out_rows, dim, weights, value_at, count, offset); break;
              case 2: accumulate_values<2>(out_rows, dim, weights, value_at, count, offset); break;
              default: accumulate_values<1>(out_rows, dim, weights, value_at, count, offset); break;
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = task.begin + r / group, head = task.kv_head * group + r % group;
        float* destination = os + (row_of[task.chunk] + token) * out_stride + head * dim;
        const float inverse = 1.0f / total[r];
        for (int64_t d = 0; d < dim; ++d) destination[d] = acc[r * dim + d] * inverse;
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

// rms_norm_row for each of `rows` rows of x (width floats apart) into y, on the threads.
void rms_norm_rows(float* y, const float* x, const float* weight, int64_t rows, int64_t width, float eps) {
  for_each_row(rows, [&](int64_t r) { rms_norm_row(y + r * width, x + r * width, weight, width, eps); });
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

// Every decoder layer of a step in one call: plain loops for the norms, rotary, cache writes and
// SwiGLU around the products and the paged attention above (decode rows and prefill chunks
// each by their kernel). Through PyTorch ops a layer costs ~20 dispatches from Python and a
// temporary tensor per op, which weigh most where rows are few (measured on decode-only steps:
// one stream of the benchmark's tiny model ~1,000 -> ~1,500 tokens/s; a step of its serving
// model on one thread, 8 sequences 2.45 -> 2.00 ms, 32 sequences 5.3 -> 4.9 ms). Products of
// up to `small_rows` rows take the row-parallel kernel on the plain weights; larger ones
// oneDNN's, on the packed weights where given.
class StepLayers {
 public:
  StepLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, int64_t window, int64_t small_rows)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(static_cast<float>(eps)), window_(window),
        small_rows_(small_rows) {}

  // matrices, packed, biases: qkv, o, gate_up, down, each (out, in); packed copies and biases
  // may be None. k_cache, v_cache: (blocks, block_size, K, D).
  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, const std::vector<at::Tensor>& matrices,
                 const std::vector<c10::optional<at::Tensor>>& packed,
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

  // hidden: (N, hidden), updated in place through every layer; slots: (N,) int64 cache slot of
  // each row's token; cos, sin: (N, D). The decode rows (one token of a sequence each) as
  // paged_decode_attention takes them: decode_rows (B,), decode_tables (B, W), decode_contexts
  // (B,); the prefill chunks as paged_prefill_attention does: chunk_rows, chunk_lengths,
  // chunk_contexts (C,) and chunk_tables (C, W'). Either group may be empty.
  void forward(at::Tensor& hidden, const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin,
               const at::Tensor& decode_rows, const at::Tensor& decode_tables, const at::Tensor& decode_contexts,
               const at::Tensor& chunk_rows, const at::Tensor& chunk_lengths, const at::Tensor& chunk_contexts,
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
  m.def("paged_prefill_attention", &paged_prefill_attention, "causal attention of prefill chunks over the paged KV cache (float32, CPU)");
  m.def("rms_norm", &rms_norm, "rms_norm of each row of x times weight (float32, CPU)");
  m.def("greedy_tokens", &greedy_tokens, "argmax of each row of float32 logits (the first of equal ones)");
  pybind11::class_<StepLayers>(m, "StepLayers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, int64_t, int64_t>())
      .def("add_layer", &StepLayers::add_layer)
      .def("forward", &StepLayers::forward);
}
