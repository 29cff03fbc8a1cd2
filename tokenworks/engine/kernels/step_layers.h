// StepLayers, the class bindings.cpp hands to Python; its methods are in step_layers.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace tokenworks {

// Every decoder layer of a step in one call: plain loops for the norms, rotary, cache writes and
// SwiGLU around the products and the paged attention (decode rows and prefill chunks each by
// their kernel). Through PyTorch ops a layer costs ~20 dispatches from Python and a temporary
// tensor per op, which weigh most where rows are few (measured on decode-only steps: one stream
// of the benchmark's tiny model ~1,000 -> ~1,500 tokens/s; a step of its serving model on one
// thread, 8 sequences 2.45 -> 2.00 ms, 32 sequences 5.3 -> 4.9 ms). Products of up to
// `small_rows` rows take the row-parallel kernel on the plain weights; larger ones oneDNN's, on
// the packed weights where given.
class StepLayers {
 public:
  static constexpr int64_t kMaxLoraRank = 512;
  static constexpr int64_t kLoraTileRows = 8;
  // Multiply-adds of adapter work a thread takes at least (fewer run on the calling thread).
  static constexpr int64_t kLoraParallelWork = 256 * 1024;

  StepLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, int64_t window, int64_t small_rows)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(static_cast<float>(eps)), window_(window),
        small_rows_(small_rows) {}

  // matrices, packed, biases: qkv, o, gate_up, down, each (out, in); packed copies and biases
  // may be None. k_cache, v_cache: (blocks, block_size, K, D).
  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, const std::vector<at::Tensor>& matrices,
                 const std::vector<c10::optional<at::Tensor>>& packed,
                 const std::vector<c10::optional<at::Tensor>>& biases, const at::Tensor& k_cache,
                 const at::Tensor& v_cache);

  // One piece of a LoRA adapter (engine/lora.py): what rows of adapter `key` add to columns
  // [offset, offset + width) of product `product` (0 qkv, 1 o, 2 gate_up, 3 down) of `layer`:
  // x A^T B_t, with a: (rank, in) and b_t: (rank, width), B transposed and scaled. Added once per
  // piece when the adapter is loaded; remove_adapter forgets them all.
  void add_adapter_piece(int64_t key, int64_t layer, int64_t product, const at::Tensor& a, const at::Tensor& b_t,
                         int64_t offset);
  void remove_adapter(int64_t key);

  // hidden: (N, hidden), updated in place through every layer; slots: (N,) int64 cache slot of
  // each row's token; cos, sin: (N, D). The decode rows (one token of a sequence each) as
  // paged_decode_attention takes them: decode_rows (B,), decode_tables (B, W), decode_contexts
  // (B,); the prefill chunks as paged_prefill_attention does: chunk_rows, chunk_lengths,
  // chunk_contexts (C,) and chunk_tables (C, W'). Either group may be empty. row_adapters: (N,)
  // int64, each row's adapter key or -1 for the base; empty when no row has one.
  void forward(at::Tensor& hidden, const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin,
               const at::Tensor& decode_rows, const at::Tensor& decode_tables, const at::Tensor& decode_contexts,
               const at::Tensor& chunk_rows, const at::Tensor& chunk_lengths, const at::Tensor& chunk_contexts,
               const at::Tensor& chunk_tables, const at::Tensor& row_adapters);

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

  struct LoraPiece {
    at::Tensor a_t, b_t;  // (in, rank) and (rank, width), the rank zero-padded to whole vectors (kLanes)
    int64_t offset;
  };
  using Adapter = std::vector<std::vector<LoraPiece>>;  // [layer * 4 + product]

  // x W^T + b for the rows of x: (N, in) -> (N, out).
  at::Tensor product(const Projection& p, const at::Tensor& x) const;
  // residual (N, out, rows `stride` apart) += x W^T + b: the small kernel adds in place.
  void add_product(const Projection& p, const at::Tensor& x, float* residual, int64_t stride) const;
  // y (N rows, `stride` apart) += each row's adapter's pieces of this product of x: (N, in).
  void add_adapters(int64_t layer, int product, const at::Tensor& x, float* y, int64_t stride) const;
  void set_row_adapters(const at::Tensor& row_adapters, int64_t rows);

  int64_t heads_, kv_heads_, head_dim_;
  float eps_;
  int64_t window_, small_rows_;
  std::vector<Layer> layers_;
  std::unordered_map<int64_t, Adapter> adapters_;
  // The step's rows of each adapter, in tiles of at most kLoraTileRows rows of one adapter (the
  // rows of a tile go through each piece together); empty when no row has an adapter.
  struct LoraTile {
    const Adapter* adapter;
    std::vector<int64_t> rows;
  };
  std::vector<LoraTile> lora_tiles_;
};

}  // namespace tokenworks
