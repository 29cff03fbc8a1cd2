// apply_token_bitmask_: structured outputs' token masks on the logits, in place. A grammar's
// mask has one bit per vocabulary entry (llguidance writes 32 to an int32, lowest bit first);
// a clear bit's logit becomes -inf. Most words of a JSON grammar's mask are all clear or all
// set, so a word is written whole or skipped. Unpacking the bits to a bool tensor and
// masked_fill took 0.43 ms for 32 rows of 8,192 logits here; this reads each word once.

#include "cpu_kernels.h"

#include <algorithm>
#include <limits>

namespace tokenworks {

void apply_token_bitmask_(at::Tensor& logits, const at::Tensor& bitmask, const at::Tensor& rows) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.stride(1) == 1,
              "apply_token_bitmask_: (R, vocab) float32 logits with contiguous rows");
  TORCH_CHECK(bitmask.dim() == 2 && bitmask.scalar_type() == at::kInt && bitmask.is_contiguous(),
              "apply_token_bitmask_: (M, words) contiguous int32 bitmask");
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong && rows.size(0) == bitmask.size(0),
              "apply_token_bitmask_: one logits row index (int64) per bitmask row");
  const int64_t vocab = logits.size(1), words = bitmask.size(1), stride = logits.stride(0);
  TORCH_CHECK(words * 32 >= vocab, "apply_token_bitmask_: the bitmask covers fewer tokens than the logits");
  float* base = logits.data_ptr<float>();
  const uint32_t* masks = reinterpret_cast<const uint32_t*>(bitmask.data_ptr<int32_t>());
  const int64_t* row_index = rows.data_ptr<int64_t>();
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  for (int64_t m = 0; m < bitmask.size(0); ++m) {
    TORCH_CHECK(row_index[m] >= 0 && row_index[m] < logits.size(0), "apply_token_bitmask_: row out of range");
  }
  for_each_row(bitmask.size(0), [&](int64_t m) {
    float* x = base + row_index[m] * stride;
    const uint32_t* mask = masks + m * words;
    for (int64_t w = 0; w * 32 < vocab; ++w) {
      const uint32_t bits = mask[w];
      if (bits == 0xFFFFFFFFu) continue;  // every token of the word allowed
      const int64_t first = w * 32, end = std::min(first + 32, vocab);
      if (bits == 0) {
        std::fill(x + first, x + end, minus_infinity);
        continue;
      }
      for (int64_t i = first; i < end; ++i) {
        if (!((bits >> (i - first)) & 1u)) x[i] = minus_infinity;
      }
    }
  });
}

}  // namespace tokenworks
