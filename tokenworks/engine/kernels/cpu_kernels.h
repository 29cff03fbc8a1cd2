// What the kernel files know of each other: every kernel's signature (its definition and the
// comment on its arguments live in the file named above it), the checks of arguments two files
// share, and for_each_row.
#pragma once

// ATen's own headers, not torch/extension.h: that one (the C++ frontend and Python's API) costs
// g++ ~30 s of CPU in every file that includes it, these 2-5 s; only bindings.cpp needs Python.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "thread_pool.h"

namespace tokenworks {

// products.cpp
void small_batch_product(float* y, int64_t y_stride, const float* x, int64_t x_stride, const float* w,
                         const float* b, int64_t rows, int64_t in, int64_t out, bool accumulate);
at::Tensor linear_small_batch(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
at::Tensor onednn_product(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// decode_attention.cpp
void paged_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& rows, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& context_lens,
                            double scale, int64_t window);

// prefill_attention.cpp
void paged_prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& first_rows,
                             const at::Tensor& lengths, const at::Tensor& context_lens, double scale, int64_t window);
// The most query heads per key/value head it takes: its tile of query rows (4 vectors of them).
int64_t prefill_attention_max_group();

// norm_and_argmax.cpp
void rms_norm_rows(float* y, const float* x, const float* weight, int64_t rows, int64_t width, float eps);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor greedy_tokens(const at::Tensor& logits);
void apply_token_bitmask_(at::Tensor& logits, const at::Tensor& bitmask, const at::Tensor& rows);

inline void check_float(const at::Tensor& tensor, const char* what) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat && tensor.is_contiguous(), what, " must be contiguous float32");
}

// Every block id of the tables names a block of the cache, and every row one of the step's:
// checked before the threads start, so a bad table is an error rather than a wild read.
inline void check_rows_and_tables(const at::Tensor& block_tables, int64_t num_blocks, const int64_t* first_rows,
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

// f(row) for rows 0..rows-1, on the threads when there are enough rows to share.
template <typename F>
void for_each_row(int64_t rows, const F& f) {
  parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

}  // namespace tokenworks
