// The module Python loads: CPU kernels for the engine's steps, where PyTorch's general ops leave
// speed behind, one family a file.
//
// linear_small_batch (products.cpp): y = x W^T (+ b) for a few rows of x, each thread streaming
//   its own rows of the weights.
// paged_decode_attention (decode_attention.cpp): one query token per sequence, reading its keys
//   and values in place in the paged cache.
// paged_prefill_attention (prefill_attention.cpp): the causal attention of prompts (or chunks of
//   them) over the paged cache, flash-attention style.
// StepLayers (step_layers.h, .cpp): every decoder layer of a step in one call, the kernels above
//   (and oneDNN's products, for more rows) with plain loops (norms, rotary, cache writes, SwiGLU).
// rms_norm, greedy_tokens (norm_and_argmax.cpp): the model's final norm of the rows that sample,
//   and the argmax of each row of logits.
// apply_token_bitmask_ (token_bitmask.cpp): structured outputs' grammar masks on the logits.
//
// cpu_kernels.h declares what one file calls in another; vectors.h holds the inline arithmetic
// of the inner loops (the dot product, vectors of one register, exp), so it inlines in every file.
// set_threads (thread_pool.h, .cpp): whether the kernels' parallel loops run on their own
//   threads (as many as torch.set_num_threads says) or OpenMP's, and how long their own spin
//   when idle; the engine sets it each step. Built with -O3 -march=native for the CPU it runs on: the loops
// become that CPU's widest vector instructions, and the dot product takes AVX-512 or AVX2
// intrinsics where the CPU has them.

// pybind11 with torch's casters of tensors, the part of torch/extension.h this file needs: the
// whole header (the C++ frontend too) costs g++ ~30 s of CPU, this one ~9 (torch 2.13).
#include <torch/csrc/utils/pybind.h>

#include "cpu_kernels.h"
#include "step_layers.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace tokenworks;
  m.def("linear_small_batch", &linear_small_batch, "x W^T + b for a few rows of x (float32, CPU)");
  m.def("paged_decode_attention", &paged_decode_attention, "one-token attention over the paged KV cache (float32, CPU)");
  m.def("paged_prefill_attention", &paged_prefill_attention, "causal attention of prefill chunks over the paged KV cache (float32, CPU)");
  m.def("prefill_attention_max_group", &prefill_attention_max_group,
        "the most query heads per key/value head paged_prefill_attention takes (its tile of query rows)");
  m.def("rms_norm", &rms_norm, "rms_norm of each row of x times weight (float32, CPU)");
  m.def("greedy_tokens", &greedy_tokens, "argmax of each row of float32 logits (the first of equal ones)");
  m.def("apply_token_bitmask_", &apply_token_bitmask_,
        "logits[rows[m], t] = -inf wherever bit t of bitmask row m is clear (float32, CPU, in place)");
  m.def("set_threads", &set_threads, pybind11::arg("own"), pybind11::arg("spin_microseconds"),
        "run the kernels' loops on their own threads (which spin this long when idle) or on OpenMP's");
  m.def("own_threads", &own_threads, "whether the kernels' loops run on their own threads");
  m.def("spin_microseconds", &spin_microseconds, "how long the kernels' own idle threads spin");
  pybind11::class_<StepLayers>(m, "StepLayers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, int64_t, int64_t>())
      .def("add_layer", &StepLayers::add_layer)
      .def("add_adapter_piece", &StepLayers::add_adapter_piece)
      .def("remove_adapter", &StepLayers::remove_adapter)
      .def("forward", &StepLayers::forward);
}
