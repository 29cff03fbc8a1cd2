"""Training: pretraining from token shards, SFT on chat data, LoRA, data-parallel runs.

`tokenworks train` (cli.py) drives `pretrain.run_pretrain` and `sft.run_sft`; both build their
inputs (data.py, sft_data.py), a model, an optimizer (optim.py, lora.py), and hand them to the
shared loop (loop.py), which checkpoints (checkpoint.py) and records the run (records.py).
Nothing is imported here, so `tokenworks --help` does not pay for torch.
"""
