"""
Reproduce GPT-2 (124M) on one 8-GPU node, as build-nanogpt and llm.c do: 10B tokens of FineWeb-Edu (one epoch of
sample-10BT), ~0.5M tokens per step. First: python data/fineweb/prepare.py. Then:
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
"""
out_dir = 'out-gpt2'
dataset = 'fineweb'
batch_size = 64  # sequences per micro-batch per GPU (fits an 80 GB A100/H100 in bfloat16)
block_size = 1024
gradient_accumulation_steps = 8  # over all ranks: 8 x 64 x 1024 = 524,288 tokens per step, one micro-batch per GPU

# GPT-2 124M (GPTConfig's defaults, with the vocabulary padded to 50304)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0

# GPT-3's hyperparameters for this size, as build-nanogpt
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
max_iters = 19073  # 10e9 / 524,288
lr_decay_iters = 19073
warmup_iters = 715  # 375M tokens

eval_interval = 250
eval_iters = 160  # over all ranks: 160 x 64 x 1024 = 10M val tokens
log_interval = 10
