"""The model runner: one batched forward over a step's prefill chunks and decode tokens.

It owns the model weights and the paged KV cache, and runs the `CausalLM` layers' weights
layer by layer with attention through block tables (attention.py) and the matrix products
of linear.py, so the model code itself stays the plain reference. On CPU a step runs all its
layers in one call to the compiled `StepLayers` (kernels/step_layers.cpp), the same
computation without a Python dispatch and a temporary tensor per op. Only the last position
of requests that sample goes through the language-model head; the prompt positions of
requests that asked for prompt logprobs come back as hidden states, for the core to score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokenworks.engine.attention import (
    DecodeGroup,
    GatherBuffers,
    PrefillChunk,
    PrefillGroup,
    causal_mask,
    paged_attention,
    write_cache,
)
from tokenworks.engine.huge_pages import HugePageArena, aligned_bytes
from tokenworks.engine.kernels import cpu_kernels
from tokenworks.engine.linear import SMALL_BATCH_ROWS, Matrix, choose_linear, onednn_linear
from tokenworks.engine.lora import LoraAdapter
from tokenworks.engine.request import Request
from tokenworks.engine.scheduler import ScheduledChunk
from tokenworks.model.layers import RMSNorm, apply_rotary
from tokenworks.model.transformer import CausalLM

logger = logging.getLogger(__name__)

# Which threads run the kernels' parallel loops, chosen every step from its size
# (kernels/thread_pool.h says why). A step of up to SMALL_BATCH_ROWS rows is all the kernels'
# own regions, dozens of them microseconds apart: it runs on the kernels' threads, which spin
# through those gaps instead of paying a futex wake-up at each. SPIN_US is longer than the
# gaps and shorter than Python's work between steps (scheduling, sampling, sending the
# tokens), so between steps the cores are free for whoever streams the tokens on. A larger
# step's products are oneDNN's, on OpenMP's threads: its loops run there too, so one pool
# of threads has the cores and the other sleeps.
SPIN_US = 50


def kv_bytes_per_block(model: CausalLM, block_size: int) -> int:
    config = model.config
    element = torch.empty((), dtype=model.dtype).element_size()
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * element


@dataclass(slots=True)
class LayerWeights:
    """One layer's tensors, looked up once: q/k/v and gate/up as single matrices (two matmuls
    instead of five), and no nn.Module attribute lookups on the step's path."""

    input_norm: RMSNorm
    qkv: Matrix  # (q + 2 kv, hidden)
    qkv_bias: torch.Tensor | None
    o: Matrix
    o_bias: torch.Tensor | None
    post_norm: RMSNorm
    gate_up: Matrix  # (2 intermediate, hidden)
    gate_up_bias: torch.Tensor | None
    down: Matrix
    down_bias: torch.Tensor | None


def layer_weights(
    layer: torch.nn.Module, prepare: Callable[[torch.Tensor], Matrix] = Matrix, arena: HugePageArena | None = None
) -> LayerWeights:
    """Concatenate a layer's projections, and re-point its modules at slices of the result,
    so the weights are held once and the reference modules still see the same values. With
    an arena, every matrix moves into it (huge pages) the same way; `prepare` makes each the
    Matrix the step's Linear reads (it may add a packed copy)."""
    attention, mlp = layer.self_attn, layer.mlp
    place = arena.copy_in if arena is not None else (lambda tensor: tensor)
    fused = []
    for group in ((attention.q_proj, attention.k_proj, attention.v_proj), (mlp.gate_proj, mlp.up_proj)):
        for kind in ("weight", "bias"):
            parts = [getattr(module, kind) for module in group]
            if parts[0] is None:
                fused.append(None)
                continue
            joined = torch.cat([part.data for part in parts])
            if kind == "weight":
                joined = place(joined)
            offset = 0
            for module, part in zip(group, parts, strict=True):
                getattr(module, kind).data = joined[offset : offset + part.shape[0]]
                offset += part.shape[0]
            fused.append(joined)
    o_proj, down_proj = attention.o_proj, mlp.down_proj
    for module in (o_proj, down_proj):
        module.weight.data = place(module.weight.data)
    return LayerWeights(
        layer.input_layernorm, prepare(fused[0]), fused[1], prepare(o_proj.weight.data), o_proj.bias,
        layer.post_attention_layernorm, prepare(fused[2]), fused[3], prepare(down_proj.weight.data), down_proj.bias,
    )  # fmt: skip


def step_matrices(model: CausalLM) -> list[torch.Tensor]:
    """Every weight matrix a step reads: the layers' projections and the language-model head."""
    matrices = [model.lm_head.weight]
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for module in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
            matrices.append(module.weight)
        matrices.extend(module.weight for module in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    return matrices


@dataclass(slots=True)
class PromptRows:
    """One request's prompt positions in a step whose next prompt token gets a logprob."""

    request: Request
    first_position: int  # the first row's position: it predicts prompt token first_position + 1
    hidden: torch.Tensor  # (n, hidden) after the final norm: logits_of() makes their logits


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    slot_mapping: torch.Tensor  # (N,) flat cache slot of each token
    decode: DecodeGroup | None
    prefills: list[PrefillChunk] | PrefillGroup  # a group for the compiled kernel; [] when none
    sample_index: torch.Tensor  # (R,) rows whose hidden state becomes logits
    max_position: int  # the largest of positions
    # Requests that asked for prompt logprobs: (request, first position, count) and their rows.
    prompt_spans: list[tuple[Request, int, int]] = field(default_factory=list)
    prompt_index: torch.Tensor | None = None
    # Rows of requests with a LoRA adapter: each row's adapter key (-1: the base) for the compiled
    # layers, and each adapter's rows for the PyTorch ones; None when no row has one.
    row_adapters: torch.Tensor | None = None
    adapter_rows: list[tuple[LoraAdapter, torch.Tensor]] | None = None


class ModelRunner:
    def __init__(
        self, model: CausalLM, num_blocks: int, block_size: int, kernels: str = "auto", pack_weights: bool = True
    ) -> None:
        self.model = model
        self.config = model.config
        self.device = model.device
        self.block_size = block_size
        self.kernels = None  # the compiled CPU kernels, where they serve this model
        if kernels == "auto" and self.device.type == "cpu" and model.dtype == torch.float32:
            self.kernels, reason = cpu_kernels()
            logger.info("decode attention: %s", reason)
        self.linear = choose_linear(self.device, model.dtype, kernels, self.kernels, pack_weights)
        logger.info("matrix products: %s", self.linear.reason)
        self.k_cache, self.v_cache, self.layers, self.lm_head = self._place_cache_and_weights(num_blocks)
        self.gather_buffers = GatherBuffers()
        # The compiled prefill attention takes head sizes in whole 16-float vectors and up to its
        # tile of query rows per key/value head (64 with AVX-512, 32 with AVX2); other models
        # attend their prefill chunks with SDPA, and only their decode-only steps take the
        # compiled layers.
        config = self.config
        group = config.num_attention_heads // config.num_key_value_heads
        self.prefill_kernel = (
            self.kernels is not None
            and config.head_dim % 16 == 0
            and group <= self.kernels.prefill_attention_max_group()
        )
        # Steps run every layer in one compiled call (kernels/step_layers.cpp): any size where
        # oneDNN does the large products, as the PyTorch path would; else up to the small
        # kernel's rows.
        self.step_layers = self._step_layers() if self.kernels is not None else None
        self.step_layers_rows = math.inf if self.linear.large is onednn_linear else SMALL_BATCH_ROWS
        self._no_rows = torch.empty(0, dtype=torch.long)  # StepLayers' arguments for an absent group
        self._no_table = self._no_rows.view(0, 1)
        self._rotary_cos = self._rotary_sin = torch.empty(0, config.head_dim, dtype=model.dtype, device=self.device)

    def _place_cache_and_weights(
        self, num_blocks: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[LayerWeights], Matrix]:
        """Each layer's K and V cache, zeroed, its weights and the head's; on CPU all in huge pages."""
        model, config, block_size, prepare = self.model, self.config, self.block_size, self.linear.prepare
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        layers = config.num_hidden_layers
        if self.device.type != "cpu":
            zeros = lambda: torch.zeros(shape, dtype=model.dtype, device=self.device)  # noqa: E731
            k_cache, v_cache = [zeros() for _ in range(layers)], [zeros() for _ in range(layers)]
            weights = [layer_weights(layer, prepare) for layer in model.model.layers]
            return k_cache, v_cache, weights, prepare(model.lm_head.weight.data)
        cache_arena = HugePageArena(kv_bytes_per_block(model, block_size) * num_blocks + 2 * layers * 64)
        # Touched now, as torch.zeros would: a page first touched mid-step costs that step the
        # zeroing of 2 MiB, and the block pool hands out blocks all over the cache.
        k_cache = [cache_arena.take(shape, model.dtype).zero_() for _ in range(layers)]
        v_cache = [cache_arena.take(shape, model.dtype).zero_() for _ in range(layers)]
        weight_arena = HugePageArena(aligned_bytes(step_matrices(model)))
        model.lm_head.weight.data = weight_arena.copy_in(model.lm_head.weight.data)  # tied: the embedding's too
        logger.info("weights and KV cache in huge pages: %s", cache_arena.huge)
        weights = [layer_weights(layer, prepare, weight_arena) for layer in model.model.layers]
        return k_cache, v_cache, weights, prepare(model.lm_head.weight.data)

    def _step_layers(self) -> object:
        """The compiled StepLayers, holding this model's layers and cache."""
        config = self.config
        decoder = self.kernels.StepLayers(
            config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.rms_norm_eps,
            config.sliding_window or 0, SMALL_BATCH_ROWS,
        )  # fmt: skip
        for weights, k_cache, v_cache in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            matrices = (weights.qkv, weights.o, weights.gate_up, weights.down)
            decoder.add_layer(
                weights.input_norm.weight, weights.post_norm.weight, [matrix.weight for matrix in matrices],
                [matrix.packed for matrix in matrices],
                [weights.qkv_bias, weights.o_bias, weights.gate_up_bias, weights.down_bias], k_cache, v_cache,
            )  # fmt: skip
        return decoder

    def prepare(self, chunks: list[ScheduledChunk]) -> StepBatch:
        """Flatten the step's chunks into token rows, slots, block tables and masks."""
        size, window, device = self.block_size, self.config.sliding_window, self.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_contexts: list[int] = []
        prefills: list[PrefillChunk] = []
        chunk_rows: list[int] = []  # the prefill chunks, for the compiled kernel
        chunk_lengths: list[int] = []
        chunk_tables: list[list[int]] = []
        chunk_contexts: list[int] = []
        sample_rows: list[int] = []
        prompt_spans: list[tuple[Request, int, int]] = []
        prompt_rows: list[int] = []
        adapted: dict[LoraAdapter, list[int]] = {}
        for chunk in chunks:
            request, start, count = chunk.request, chunk.start, chunk.num_tokens
            row = len(ids)
            if request.adapter is not None:
                adapted.setdefault(request.adapter, []).extend(range(row, row + count))
            table = request.block_ids
            context = start + count
            if count == 1:  # a decode token: the common case, spelled out (256 of them a step)
                ids.append(request.all_token_ids[start])
                positions.append(start)
                slots.append(table[start // size] * size + start % size)
                decode_rows.append(row)
                decode_tables.append(table[: -(-context // size)])
                decode_contexts.append(context)
            else:
                ids.extend(request.all_token_ids[start:context])
                span = range(start, context)
                positions.extend(span)
                slots.extend(table[p // size] * size + p % size for p in span)
                if self.prefill_kernel:
                    chunk_rows.append(row)
                    chunk_lengths.append(count)
                    chunk_tables.append(table[: -(-context // size)])
                    chunk_contexts.append(context)
                else:
                    fresh = start == 0 and (window is None or count <= window)
                    mask = None if fresh else causal_mask(start, count, context, window, device)
                    block_table = torch.tensor(table[: -(-context // size)], device=device)
                    prefills.append(PrefillChunk(slice(row, row + count), block_table, mask, context))
            if chunk.samples:
                sample_rows.append(row + count - 1)
            if request.needs_prompt_logprobs:
                # Position p predicts prompt token p + 1; the ones scored before (a request
                # preempted mid-prefill computes its prompt again) are not scored twice.
                first = max(start, len(request.prompt_logprobs) - 1)
                end = min(context, request.num_prompt_tokens - 1)
                if end > first:
                    prompt_spans.append((request, first, end - first))
                    prompt_rows.extend(range(row + first - start, row + end - start))
        as_tensor = lambda values: _longs(values, device)  # noqa: E731
        decode = None
        if decode_rows:
            decode = self._decode_group(decode_rows, decode_tables, decode_contexts)
        if chunk_rows:
            prefills = PrefillGroup(
                as_tensor(chunk_rows), as_tensor(chunk_lengths), as_tensor(chunk_contexts),
                as_tensor(_padded(chunk_tables)), window,
            )  # fmt: skip
        batch = StepBatch(
            as_tensor(ids), as_tensor(positions), as_tensor(slots), decode, prefills, as_tensor(sample_rows),
            max(positions), prompt_spans, as_tensor(prompt_rows) if prompt_rows else None,
        )  # fmt: skip
        if adapted:
            keys = [-1] * len(ids)
            for adapter, rows in adapted.items():
                for row in rows:
                    keys[row] = adapter.key
            batch.row_adapters = torch.tensor(keys, dtype=torch.long)  # read on the CPU by the kernels
            batch.adapter_rows = [(adapter, as_tensor(rows)) for adapter, rows in adapted.items()]
        return batch

    def _decode_group(self, rows: list[int], tables: list[list[int]], contexts: list[int]) -> DecodeGroup:
        device, window = self.device, self.config.sliding_window
        block_table = _longs(_padded(tables), device)
        row_ids = _longs(rows, device)
        consecutive = rows[-1] - rows[0] == len(rows) - 1  # rows only grow: then they are rows[0]..rows[-1]
        token_index = slice(rows[0], rows[-1] + 1) if consecutive else row_ids
        if self.kernels is not None:  # the kernel takes lengths and rows; no mask to build
            return DecodeGroup(token_index, block_table, None, row_ids, _longs(contexts, device), window)
        context = torch.tensor(contexts, device=device)[:, None]  # (B, 1)
        keys = torch.arange(block_table.shape[1] * self.block_size, device=device)[None, :]  # (1, L)
        mask = keys < context
        if window is not None:
            mask &= (context - 1) - keys < window
        return DecodeGroup(token_index, block_table, mask[:, None, None, :])

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk]) -> tuple[torch.Tensor, list[PromptRows]]:
        """Run the step; returns (R, vocab) float32 logits for the chunks that sample, in order,
        and the hidden states of the prompt positions whose logprobs were asked for."""
        batch = self.prepare(chunks)
        if self.kernels is not None:
            self.kernels.set_threads(len(batch.input_ids) <= SMALL_BATCH_ROWS, SPIN_US)
        transformer = self.model.model
        hidden = transformer.embed_tokens(batch.input_ids)  # (N, hidden)
        cos, sin = self._rotation(batch.positions, batch.max_position, hidden.dtype)  # (N, D) each
        num_tokens = hidden.shape[0]
        compiled = not batch.prefills or isinstance(batch.prefills, PrefillGroup)
        if compiled and self.step_layers is not None and num_tokens <= self.step_layers_rows:
            self._compiled_layers(batch, hidden, cos, sin)
        else:
            hidden = self._layers(batch, hidden, cos[:, None, :], sin[:, None, :])  # broadcast over heads
        prompt_rows = []
        if batch.prompt_index is not None:
            scored = self._final_norm(hidden.index_select(0, batch.prompt_index))
            offset = 0
            for request, first, count in batch.prompt_spans:
                prompt_rows.append(PromptRows(request, first, scored[offset : offset + count]))
                offset += count
        if batch.sample_index.shape[0] != num_tokens:  # else every row samples, in order
            hidden = hidden[batch.sample_index]
        return self.logits_of(self._final_norm(hidden)), prompt_rows

    def _final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.model.model.norm
        if self.kernels is not None:  # one call (the kernel's comment says why)
            return self.kernels.rms_norm(hidden, norm.weight, norm.eps)
        return norm(hidden)

    @torch.inference_mode()
    def logits_of(self, normed: torch.Tensor) -> torch.Tensor:
        """(n, hidden) final-normed hidden states -> (n, vocab) float32 logits."""
        return self.linear(normed, self.lm_head, None).float()

    def _rotation(
        self, positions: torch.Tensor, max_position: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (N, D) of the positions' rotary angles, rows of tables computed once by
        the model's own rotary module: one lookup a step instead of its ~7 tensor ops (which,
        cold after a step, took 0.13 ms of a 19 ms decode step of the benchmark's tiny model),
        and a position's values no longer depend on where it sits in the batch. The tables grow
        (doubling) to the largest position seen."""
        if max_position >= self._rotary_cos.shape[0]:
            size = max(2 * self._rotary_cos.shape[0], max_position + 1, 1024)
            every = torch.arange(size, device=self.device)[None]
            cos, sin = self.model.model.rotary(every, dtype)  # (1, 1, size, D)
            self._rotary_cos, self._rotary_sin = cos[0, 0].contiguous(), sin[0, 0].contiguous()
        return self._rotary_cos.index_select(0, positions), self._rotary_sin.index_select(0, positions)

    def _compiled_layers(self, batch: StepBatch, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Every layer in one call to StepLayers, updating hidden in place."""
        none, no_table = self._no_rows, self._no_table
        decode, prefill = batch.decode, batch.prefills or None
        self.step_layers.forward(
            hidden, batch.slot_mapping, cos, sin,
            *((decode.rows, decode.block_table, decode.context_lens) if decode else (none, no_table, none)),
            *((prefill.first_rows, prefill.lengths, prefill.context_lens, prefill.block_table)
              if prefill else (none, none, none, no_table)),
            batch.row_adapters if batch.row_adapters is not None else none,
        )  # fmt: skip

    # ---- LoRA adapters -------------------------------------------------------------------

    def add_adapter(self, adapter: LoraAdapter) -> None:
        """Hand a loaded adapter's pieces to the compiled layers (the PyTorch ones read them from
        the adapter itself)."""
        if self.step_layers is None:
            return
        for layer, products in enumerate(adapter.pieces):
            for product, pieces in enumerate(products):
                for piece in pieces:
                    self.step_layers.add_adapter_piece(adapter.key, layer, product, piece.a, piece.b_t, piece.offset)

    def remove_adapter(self, adapter: LoraAdapter) -> None:
        if self.step_layers is not None:
            self.step_layers.remove_adapter(adapter.key)

    def _layers(self, batch: StepBatch, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The decoder layers with PyTorch ops around the step's products and paged attention."""
        num_tokens = hidden.shape[0]
        config, linear = self.config, self.linear
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        adapters = batch.adapter_rows or ()
        for index, weights in enumerate(self.layers):
            normed = weights.input_norm(hidden)
            qkv = linear(normed, weights.qkv, weights.qkv_bias)
            _add_adapters(adapters, index, 0, normed, qkv)
            # Rotate queries and keys together (one set of kernels for both), then split them.
            rotated = apply_rotary(qkv[:, : (heads + kv_heads) * head_dim].view(num_tokens, -1, head_dim), cos, sin)
            q, k = rotated[:, :heads], rotated[:, heads:]  # (N, H, D), (N, K, D)
            v = qkv[:, (heads + kv_heads) * head_dim :].view(num_tokens, kv_heads, head_dim)
            write_cache(self.k_cache[index], batch.slot_mapping, k)
            write_cache(self.v_cache[index], batch.slot_mapping, v)
            attended = paged_attention(
                q,
                k,
                v,
                self.k_cache[index],
                self.v_cache[index],
                batch.decode,
                batch.prefills,
                self.gather_buffers,
                self.kernels,
            )
            heads_out = attended.view(num_tokens, -1)
            projected = linear(heads_out, weights.o, weights.o_bias)
            _add_adapters(adapters, index, 1, heads_out, projected)
            hidden = hidden + projected
            normed = weights.post_norm(hidden)
            gate_up = linear(normed, weights.gate_up, weights.gate_up_bias)
            _add_adapters(adapters, index, 2, normed, gate_up)
            gate, up = gate_up.chunk(2, -1)
            activated = F.silu(gate) * up
            projected = linear(activated, weights.down, weights.down_bias)
            _add_adapters(adapters, index, 3, activated, projected)
            hidden = hidden + projected
        return hidden


def _add_adapters(
    adapters: Iterable[tuple[LoraAdapter, torch.Tensor]], layer: int, product: int, x: torch.Tensor, y: torch.Tensor
) -> None:
    """y[rows] += x[rows] A^T B_t for each adapter's rows and each of its pieces of this product
    (the compiled layers' add_adapters, with PyTorch ops)."""
    for adapter, rows in adapters:
        pieces = adapter.pieces[layer][product]
        if not pieces:
            continue
        selected = x.index_select(0, rows)
        for piece in pieces:
            delta = (selected @ piece.a.t()) @ piece.b_t
            y[:, piece.offset : piece.offset + delta.shape[1]].index_add_(0, rows, delta)


def _longs(values: list, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _padded(tables: list[list[int]]) -> list[list[int]]:
    """Block tables of different lengths as rows of one width, padded with block 0."""
    width = max(map(len, tables))
    return [table + [0] * (width - len(table)) for table in tables]
