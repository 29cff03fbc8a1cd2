// Matrix products: y = x W^T (+ b) for a few rows of x, and oneDNN's for more.
//
// A decode step of a few sequences is memory-bound: every weight is read once per step.
// Splitting the output rows across threads lets each stream its own contiguous run of the
// weight matrix, with x in L1: on the benchmark's small model (2 threads of an AVX-512 EPYC)
// one row reads the weights at 43-60 GB/s where oneDNN's inner product reaches 31-40
// (linear.py has the figures).

#include "cpu_kernels.h"
#include "vectors.h"

#include <ATen/core/List.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include <algorithm>

namespace tokenworks {

namespace {

const float* optional_data(const c10::optional<at::Tensor>& bias, int64_t size, const char* what) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->is_contiguous() && bias->numel() == size && bias->scalar_type() == at::kFloat, what, ": bias");
  return bias->data_ptr<float>();
}

// A weight row is asked for this many rows before it is read. The hardware prefetcher alone
// keeps too few of a row's cache lines in flight once each row is read against several rows of
// x: on a 2-core Xeon (one thread, the benchmark's small model) a decode step of 3 or 4 sequences
// took 52-58 ms without these hints, 35-43 with them (a step of 1: 29-31 and 27-29).
constexpr int64_t kPrefetchRows = 4;

}  // namespace

// y[m] (+)= W x[m] + b for `rows` rows: the output rows of W are split across the threads, so
// each streams its own contiguous run of the weights while the few rows of x stay in L1.
// `accumulate` adds to y (a residual connection) instead of overwriting it.
void small_batch_product(float* y, int64_t y_stride, const float* x, int64_t x_stride, const float* w,
                         const float* b, int64_t rows, int64_t in, int64_t out, bool accumulate) {
  // At least ~64 KB of weights per task, so thread start-up never outweighs the work.
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(in, 1));
  parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* row = w + o * in;  // read from memory once; the rows of x stay in L1
      if (o + kPrefetchRows < end) {  // ask for a later row now: see kPrefetchRows
        const char* later = reinterpret_cast<const char*>(row + kPrefetchRows * in);
        for (int64_t byte = 0; byte < in * int64_t(sizeof(float)); byte += 64) __builtin_prefetch(later + byte, 0, 3);
      }
      for (int64_t m = 0; m < rows; ++m) {
        const float value = dot(row, x + m * x_stride, in) + (b ? b[o] : 0.0f);
        y[m * y_stride + o] = accumulate ? y[m * y_stride + o] + value : value;
      }
    }
  });
}

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

}  // namespace tokenworks
