// Decode attention: one query token per sequence, attending to its keys and values where they
// lie in the paged cache. The PyTorch path first copies every sequence's blocks into a
// contiguous buffer and then reads that copy; this reads the cache in place, once, prefetching
// each next block.

#include "cpu_kernels.h"
#include "vectors.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace tokenworks {

namespace {

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
  parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
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

}  // namespace tokenworks
