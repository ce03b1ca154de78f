"""
Measure OpenAI's gpt2 on FineWeb-Edu's val split (python data/fineweb/prepare.py first):
    python train.py config/eval_gpt2.py        (or --dataset=shakespeare, say, for another set)
"""
init_from = 'gpt2'
eval_only = True
out_dir = 'out-eval-gpt2'  # log.jsonl gets the result
dataset = 'fineweb'
batch_size = 8
eval_iters = 500  # 500 x 8 x 1024 = 4M tokens
