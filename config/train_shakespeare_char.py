"""
A small character-level model of Tiny Shakespeare (nanoGPT's recipe): a few minutes on one GPU, val loss about
1.47. First: python data/shakespeare_char/prepare.py. The CPU recipe is in the README (smaller, 2000 iterations).
"""
out_dir = 'out-shakespeare-char'
eval_interval = 250  # evaluations of a small model are cheap, and it overfits: keep an eye on val loss
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

# a baby GPT
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model can take a large learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # a little larger than usual: few tokens per step
warmup_iters = 100
