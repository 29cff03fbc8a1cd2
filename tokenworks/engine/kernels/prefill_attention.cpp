// Prefill attention: the causal attention of prompts (or chunks of them) over the paged cache,
// flash-attention style, in tiles of four vectors of query rows (64 with AVX-512, 32 with AVX2)
// and 32 keys.

#include "cpu_kernels.h"
#include "vectors.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

namespace tokenworks {

namespace {

// A prefill task's query rows (its positions x the query heads of one key/value head): four
// vectors, so one column of the transposed queries sits in four registers.
constexpr int64_t kRowBlock = 4 * kLanes;
constexpr int64_t kKeyTile = 32;  // keys scored, softmaxed and summed at a time
// Tiles whose accumulators and operands fit the registers (vectors.h): keys scored at once
// against the four query vectors (kKeys x 4 accumulators, 4 queries), and value vectors summed
// at once for four rows (4 x kVecs accumulators, kVecs values).
constexpr int kScoreKeys = kVecRegisters >= 32 ? 4 : 2;
constexpr int kValueVecs = kVecRegisters >= 32 ? 4 : 2;

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

int64_t prefill_attention_max_group() { return kRowBlock; }

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
              "paged_prefill_attention: head shapes (head size a multiple of ", kLanes, ", at most ", kRowBlock,
              " query heads per key head)");
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
  parallel_for(0, threads, 1, [&](int64_t, int64_t) {
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
        for (; j + kScoreKeys <= count; j += kScoreKeys) {
          score_keys<kScoreKeys>(scores.data() + j * kRowBlock, qt.data(), key_at + j, dim, scale);
        }
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
          for (int64_t offset = 0; offset < dim; offset += kValueVecs * kLanes) {
            float* out_rows = acc.data() + r * dim;
            const float* weights = scores.data() + r;
            switch (std::min<int64_t>(kValueVecs, (dim - offset) / kLanes)) {
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

}  // namespace tokenworks
