"""
Fine-tune OpenAI's GPT-2 (124M) on Tiny Shakespeare in GPT-2's tokens. First: python data/shakespeare/prepare.py.
Larger models: --init_from=gpt2-medium (or -large, -xl) with a smaller batch_size and more accumulation steps.
"""
out_dir = 'out-shakespeare'
init_from = 'gpt2'
eval_interval = 5
eval_iters = 40
always_save_checkpoint = False  # it overfits quickly: keep the checkpoint with the best val loss

dataset = 'shakespeare'
batch_size = 8
gradient_accumulation_steps = 4  # 32 sequences of 1024 tokens per step; ~300K training tokens: 20 steps ~ 2 epochs
max_iters = 20

learning_rate = 3e-5  # fine-tuning: a small constant learning rate
decay_lr = False
