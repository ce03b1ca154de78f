"""
The character-level Tiny Shakespeare on a CPU (nanoGPT's CPU recipe): 70-90 s on 2 cores, val loss about 1.90.
First: python data/shakespeare_char/prepare.py. Then:
    python train.py config/train_shakespeare_char_cpu.py
    python sample.py --init_from=resume --out_dir=out-shakespeare-char-cpu
"""
out_dir = 'out-shakespeare-char-cpu'
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # characters of context

# a smaller baby GPT
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
