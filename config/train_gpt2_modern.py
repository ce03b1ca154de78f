"""
train_gpt2.py with this repo's switches on, for a side-by-side comparison on the same data and budget: rotary
position embeddings, grouped-query attention (4 key/value heads for 12 query heads), sliding-window attention.
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_modern.py
"""
out_dir = 'out-gpt2-modern'
dataset = 'fineweb'
batch_size = 64
block_size = 1024
gradient_accumulation_steps = 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
rope = True
gqa = True
n_kv_head = 4
swa = True
window_size = 512  # half the context: the window matters, yet most of the context stays in reach

learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
max_iters = 19073
lr_decay_iters = 19073
warmup_iters = 715

eval_interval = 250
eval_iters = 160
log_interval = 10
