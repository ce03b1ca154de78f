"""
GPT-2 in one file: the model, then its KV cache and generation.

With every switch in GPTConfig off this is exactly OpenAI's GPT-2 (pre-LayerNorm blocks, LayerNorm eps
1e-5, tanh-GELU MLP, learned absolute positions, tied input/output embeddings). Three switches change it,
each visible at one place in the code:
- rope: rotary position embeddings on q and k (rotate-half convention of GPT-NeoX and Llama) instead of
  the learned position table wpe, which then does not exist. Seen where positions enter (GPT.forward) and
  where q and k are made (CausalSelfAttention.forward).
- gqa: grouped-query attention. n_kv_head key/value heads; query head h reads key/value head
  h // (n_head // n_kv_head). The KV cache holds n_kv_head heads only. Seen where c_attn's output is split.
- swa: sliding-window attention. The query at position i sees keys j with i - window_size < j <= i, and
  the KV cache becomes a rolling buffer of window_size slots. Seen where attention is computed
  (CausalSelfAttention.forward): past window_size tokens, sliding_window_attention computes only the pairs
  the window allows, at O(T * window_size) cost.

Shapes: B batch, T time (sequence length), C n_embd, V vocab_size, nh n_head, nkv key/value heads
(n_kv_head under gqa, else n_head), hd head size = C // nh, L n_layer, S the cache's slots.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024      # longest sequence the model sees at once (and wpe's length)
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64, which GPUs prefer
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # biases in Linear and LayerNorm, as GPT-2 has them
    rope: bool = False
    rope_theta: float = 10000.0
    gqa: bool = False
    n_kv_head: int = 4          # used only when gqa
    swa: bool = False
    window_size: int = 256      # used only when swa

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "n_kv_head", "window_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        problems = [
            (self.n_embd % self.n_head, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}"),
            (self.gqa and self.n_head % self.n_kv_head,
             f"with gqa, n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}"),
            (self.rope and (self.n_embd // self.n_head) % 2, f"with rope the head size must be even, got "
             f"n_embd={self.n_embd} // n_head={self.n_head} = {self.n_embd // self.n_head}"),
            (self.rope and not self.rope_theta > 0, f"rope_theta={self.rope_theta} must be positive"),
            (not 0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
        ]
        for wrong, message in problems:
            if wrong:
                raise ValueError(message)


# ----------------------------------------------------------------------------------------------------
# Small ideas as small functions

def rope_cos_sin(positions, head_size, theta):
    """cos and sin of the rotation angles, (T, hd) each: position t turns pair i by t * theta^(-2i/hd)."""
    inv_freq = theta ** (-torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size)
    angles = torch.outer(positions.float(), inv_freq)       # (T, hd/2)
    angles = torch.cat((angles, angles), dim=-1)             # (T, hd): rotate-half pairs i with i + hd/2
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate x (B, nh, T, hd) by its positions' angles, in the rotate-half convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention_mask(q_pos, k_pos, window_size=None):
    """(Tq, Tk) booleans, True where a query may attend: causal, and within the window under SWA."""
    distance = q_pos[:, None] - k_pos[None, :]
    mask = distance >= 0
    if window_size is not None:
        mask &= distance < window_size
    return mask


def sliding_window_attention(q, k, v, window_size, dropout_p=0.0):
    """
    Causal attention within the window, q (B, nh, T, hd), k and v (B, nkv, T, hd), at O(T * window_size) cost:
    the queries go in chunks of window_size, and chunk c attends to the keys of chunks c - 1 and c only, the
    only ones its window reaches. A dense (T, T) mask would give the same values at O(T^2) cost, and more
    than plain causal attention, whose kernels skip the masked half. T is padded up to whole chunks; padded
    keys lie in every real query's future and padded queries are dropped.
    """
    B, nh, T, hd = q.shape
    W, n = window_size, -(-T // window_size)  # n chunks
    pad = lambda t: F.pad(t, (0, 0, 0, n * W - T)).unflatten(2, (n, W))  # (B, h, n, W, hd)
    q, k, v = pad(q), pad(k), pad(v)
    before = lambda t: F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # chunk c - 1 at index c (zeros before chunk 0)
    k, v = torch.cat((before(k), k), dim=3), torch.cat((before(v), v), dim=3)  # (B, nkv, n, 2W, hd)
    # chunks into the batch: (B * n, heads, ...), as SDPA (and enable_gqa) expects heads at dim -3
    to_batch = lambda t: t.transpose(1, 2).flatten(0, 1)
    # the band: query i of a chunk is at position W + i of the 2W keys; chunk 0 has no chunk before it
    mask = attention_mask(torch.arange(W, 2 * W, device=q.device), torch.arange(2 * W, device=q.device), W)
    mask = mask.repeat(B * n, 1, 1, 1)                                      # (B * n, 1, W, 2W)
    mask[::n, :, :, :W] = False
    y = F.scaled_dot_product_attention(to_batch(q), to_batch(k), to_batch(v), attn_mask=mask, dropout_p=dropout_p,
                                       enable_gqa=k.size(1) != nh)         # (B * n, nh, W, hd)
    return y.unflatten(0, (B, n)).transpose(1, 2).flatten(2, 3)[:, :, :T]   # (B, nh, T, hd)


# ----------------------------------------------------------------------------------------------------
# The model

class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head if config.gqa else config.n_head  # GQA: fewer key/value heads
        self.head_size = config.n_embd // config.n_head
        # one fused projection: [q: nh*hd | k: nkv*hd | v: nkv*hd]; without gqa exactly GPT-2's c_attn
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.window_size = config.window_size if config.swa else None
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos_sin, mask, cache):
        B, T, C = x.size()
        hd = self.head_size
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)     # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if cos_sin is not None:  # RoPE: positions enter here, as rotations of q and k
            q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)             # (B, nkv, Tk, hd): the keys this step sees
            q = q.to(k.dtype)                                 # a decode step attends in the cache's dtype
        dropout_p = self.dropout if self.training else 0.0
        if self.window_size is not None and T > self.window_size:  # SWA: only the keys in the window are computed
            y = sliding_window_attention(q, k, v, self.window_size, dropout_p)  # (B, nh, T, hd)
        else:
            # mask None is plain causal attention (the flash kernels on CUDA; under SWA too while T fits in the
            # window), or one new token that sees every key it is given (cache is tested before T: a test of a
            # dynamic T would break the compiled graph). Under GQA query head h reads kv head h // (nh // nkv):
            # enable_gqa, no copies.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=mask is None and (cache is None or T > 1),
                                               enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C).to(x.dtype)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, mask, cache):
        x = x + self.attn(self.ln_1(x), cos_sin, mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        if not config.rope:  # learned absolute positions, GPT-2's way
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix embeds and unembeds
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """
        idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy against targets (-1 ignored).
        cache: a KVCache that idx continues (generation). last_only: logits of the last position only,
        (B, 1, V), all that generation needs.
        """
        cfg = self.config
        check_token_ids(idx)
        B, T = idx.size()
        # the cache's position: a number in eager steps (read without waiting on the device), a 0-dim tensor in
        # compiled ones, so that one graph serves every position
        compiling = torch.compiler.is_compiling()
        start = 0 if cache is None else cache.pos if compiling else cache.length
        if not compiling:
            check_positions(cfg, T, start, cache)
        pos = start + torch.arange(T, device=idx.device)          # (T,)

        # positions enter: added as learned vectors, or (RoPE) as rotations inside attention
        x = self.transformer.wte(idx)                            # (B, T, C)
        cos_sin = None
        if cfg.rope:
            cos_sin = tuple(t.to(x.dtype) for t in rope_cos_sin(pos, cfg.n_embd // cfg.n_head, cfg.rope_theta))
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)

        # the mask: None is plain causal (SWA's window is applied in attention), or one new token that sees the
        # cache's filled slots (eager steps are given those only; a compiled step is given all, and this mask)
        mask = cache.filled_slots() if cache is not None and T == 1 and compiling else None

        for block in self.transformer.h:
            x = block(x, cos_sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.transformer.ln_f(x))          # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------------------------------------
    # Generation (the KV cache and the sampling functions follow the class)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True, generator=None):
        """
        Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).
        temperature=0.0 is greedy; top_k and top_p (nucleus) restrict sampling; pass a torch.Generator
        for reproducible samples. Call model.eval() first, as dropout would make the output random.
        """
        tokens = [idx] + list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat(tokens, dim=1)

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                        generator=None):
        """
        Like generate, but yields each new token (B, 1) as soon as it is chosen (for streaming).

        Without the cache every step runs the last block_size tokens. With it the prompt is encoded once
        (prefill) and each new token costs one position (decode). Past block_size, generation without the
        cache sees only the last block_size tokens, renumbered from position 0; to give the same tokens, the
        cache is rebuilt from them at every step. Only SWA under RoPE runs on: its rolling cache keeps the
        last window_size positions, which go on counting past block_size (as in Mistral).
        """
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        cfg = self.config
        runs_on = cfg.swa and cfg.rope  # the only cache that can go past block_size
        cache, cached, seq = None, 0, idx
        for step in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(seq[:, -cfg.block_size:], last_only=True)
            elif cache is None or (cached >= cfg.block_size and not runs_on):
                prompt = seq[:, -cfg.block_size:]
                # room for the prompt and the tokens still to feed back (the last one never is)
                cache = KVCache(cfg, seq.size(0), seq.device, self.transformer.wte.weight.dtype,
                                max_len=prompt.size(1) + max_new_tokens - 1 - step)
                logits, _ = self(prompt, cache=cache, last_only=True)  # prefill
                cached = prompt.size(1)
            else:
                logits, _ = self(seq[:, -1:], cache=cache)               # decode one position
                cached += 1
            next_token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            seq = torch.cat((seq, next_token), dim=1)
            yield next_token


# ----------------------------------------------------------------------------------------------------
# The KV cache

class KVCache(nn.Module):
    """
    Keys and values of the tokens seen so far, preallocated for every layer: (L, B, nkv, S, hd). It takes a
    prompt once (prefill, into the empty cache), then one token at a time (decode). Keys are stored after
    RoPE, so each carries its own position and the order of the slots does not matter to attention.

    Without SWA, S = block_size and slot t holds position t: no growing torch.cat, no allocation per step.
    With SWA, S = window_size: a rolling buffer where slot t % window_size holds position t (as in
    Mistral). Memory is bounded by the window, and under RoPE positions may run on past block_size.
    max_len, when known, caps S: generation sizes the cache to the prompt and the tokens it will add.

    An eager decode step reads the position as a number, length, writes slot length % S and attends over
    the filled slots only: no mask to build, and no step waits on the device to read a position. A compiled
    step has the same shapes at every position, as in gpt-fast: the position is the tensor pos, the step
    writes slot pos % S and attends over all S slots with a mask that hides the empty ones, so one graph of
    torch.compile serves every position. Compiled steps advance pos only: a cache they filled is for them.
    """

    def __init__(self, config, batch_size, device, dtype, max_len=None):
        super().__init__()
        slots = min(config.window_size if config.swa else config.block_size, max_len or config.block_size)
        n_kv_head = config.n_kv_head if config.gqa else config.n_head
        shape = (config.n_layer, batch_size, n_kv_head, slots, config.n_embd // config.n_head)
        # on a CPU in float32 whatever the model's dtype: attention of one query over bfloat16 keys is 5-8x slower
        # there (PyTorch's CPU kernel, e.g. 0.86 against 0.10 ms a layer over 1024 keys)
        dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
        # zeros, not empty: masked slots must hold numbers, as NaN * 0 would still be NaN
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        # tokens seen so far: the next token's position
        self.register_buffer("pos", torch.zeros((), dtype=torch.long, device=device), persistent=False)
        self.length = 0  # the same, as a number, for eager steps

    def update(self, layer, k, v):
        """Store k, v (B, nkv, T, hd) of the next T positions; return the keys and values they attend over."""
        T, S, ks, vs = k.size(2), self.k.size(3), self.k[layer], self.v[layer]
        if T > 1:  # prefill, into the empty cache: the prompt attends to itself; its last S positions stay
            keep = min(T, S)
            slots = torch.arange(T - keep, T, device=k.device) % S
            ks.index_copy_(2, slots, k[:, :, -keep:].to(ks.dtype))
            vs.index_copy_(2, slots, v[:, :, -keep:].to(vs.dtype))
            return k, v
        # decode: position pos goes to slot pos % S (the oldest slot, under SWA)
        if torch.compiler.is_compiling():  # all S slots; filled_slots() masks the empty ones
            slot = (self.pos % S).view(1)
            ks.index_copy_(2, slot, k.to(ks.dtype))
            vs.index_copy_(2, slot, v.to(vs.dtype))
            return ks, vs
        ks[:, :, self.length % S] = k[:, :, 0]
        vs[:, :, self.length % S] = v[:, :, 0]
        filled = min(self.length + 1, S)
        return ks[:, :, :filled], vs[:, :, :filled]

    def filled_slots(self):
        """(1, S) booleans, True where a slot holds a position, during compiled decoding (after update): slots
        fill in order from 0, and all are filled once pos >= S - 1."""
        return (torch.arange(self.k.size(3), device=self.pos.device) <= self.pos)[None, :]

    def advance(self, T):
        self.pos += T
        if not torch.compiler.is_compiling():  # a number in a compiled graph would be a guard, one graph per value
            self.length += T


# ----------------------------------------------------------------------------------------------------
# Sampling, and the checks at generation's door

def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """The next token (B, 1) from the last position's logits (B, V)."""
    logits = logits.float()  # argmax too: over bfloat16 it takes 2-3x as long on a CPU
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    ids = None  # with top_k, the tokens of the k logits kept: the draw is among those k only (cheaper than among all V)
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k, dim=-1)                     # (B, k) each
    if top_p is not None and top_p < 1.0:
        # nucleus: keep the most likely tokens until their probability reaches top_p (the first always stays)
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        sorted_logits = sorted_logits.masked_fill(before >= top_p, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    token = torch.multinomial(probs, num_samples=1, generator=generator)
    return token if ids is None else ids.gather(-1, token)


def generate_args_problem(max_new_tokens, temperature, top_k, top_p):
    """What is wrong with these generation arguments, or None (sample.py checks its options with this too)."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        return f"max_new_tokens={max_new_tokens!r} must be a non-negative integer"
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        return f"temperature={temperature!r} must be >= 0 (0 is greedy)"
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        return f"top_k={top_k!r} must be a positive integer or None"
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        return f"top_p={top_p!r} must be in (0, 1], or None"
    return None


def check_token_ids(idx):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"idx must be a (B, T) tensor of integer token ids, got {getattr(idx, 'dtype', type(idx))} "
                         f"of shape {tuple(getattr(idx, 'shape', ()))}")


def check_positions(config, T, start, cache):
    if T > config.block_size or not config.rope and start + T > config.block_size:
        raise ValueError(f"sequence length T={T} from position {start} exceeds block_size={config.block_size}: "
                         f"crop the input")
    if cache is not None and T > 1 and start:
        raise ValueError("the KV cache takes a prompt once, then one token at a time")
    if cache is not None and not config.swa and start + T > cache.k.size(3):  # a rolling cache may wrap around
        raise ValueError(f"the KV cache holds {cache.k.size(3)} positions (its max_len): make it larger")


def check_generate_args(idx, max_new_tokens, temperature, top_k, top_p):
    check_token_ids(idx)
    if idx.numel() == 0:
        raise ValueError(f"the prompt is empty (idx has shape {tuple(idx.shape)}): give at least one token")
    problem = generate_args_problem(max_new_tokens, temperature, top_k, top_p)
    if problem:
        raise ValueError(problem)


class PackedLinear(nn.Linear):
    """
    A Linear that also holds its weight packed once for the fastest CPU kernel of its dtype (pack_weights_for_cpu_).
    Without gradients it multiplies with that copy; with them it is a plain Linear, as the copy has none, and
    under torch.compile too, which packs weights its own way.
    """
    def forward(self, x):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(x)
        if isinstance(self.packed_weight, torch.Tensor):  # oneDNN's blocked layout
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        # fbgemm's float16 copy of a bfloat16 weight, bias included: float32 arithmetic and result
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed_weight)


# fbgemm's float16 kernels (x86 builds; private ops, so behind a check): oneDNN's blocked layout otherwise
HAS_FP16_KERNEL = "fbgemm" in torch.backends.quantized.supported_engines


def pack_weight(linear, fbgemm):
    """
    linear's weight packed for the fastest CPU kernel of its dtype. fbgemm: a float16 copy of a bfloat16 weight and
    its bias; float16 has more mantissa bits than bfloat16, so it holds every bfloat16 weight within its range
    exactly down to 7.6e-6 (2^-17), and smaller ones to within 3e-8. Else oneDNN's blocked layout (float32, or
    bfloat16 with AVX-512), the one torch.compile's freezing makes.
    """
    w, b = linear.weight.detach(), linear.bias
    if fbgemm:
        return torch.ops.quantized.linear_prepack_fp16(w.float(), None if b is None else b.detach().float())
    return torch.ops.mkldnn._reorder_linear_weight(w, 1)  # 1: the batch size to pack for; any still works


def pack_weights_for_cpu_(model):
    """
    For generation on a CPU: give every Linear a copy of its weight packed for the fastest kernel of its dtype
    (pack_weight). Decoding a token is a matrix-vector product per weight, bound by how fast the weight is read.
    One token of GPT-2 124M on a 2-core AVX2 CPU: float32 F.linear 39 ms (12.5 GB/s), oneDNN packed 24 ms (21);
    bfloat16 F.linear 16 ms (15.5 GB/s), fbgemm's float16 12 ms (21), which also takes a 512-token prompt 6x faster
    than PyTorch's bfloat16 kernels where oneDNN cannot pack bfloat16 (no AVX-512). As fbgemm computes in float32,
    so then do the LayerNorms (cast) and the residual stream, as in llama.cpp: no casts around each product.
    Names, values and tying stay as they were, and dtypes but the LayerNorms'; the copy costs the weights' memory
    again and does not follow later changes to the weights, so pack last, after loading and casting. Where no
    kernel takes the weights (a build without them, a dtype they do not pack) the Linears stay plain. Returns
    whether it packed.
    """
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
               and m.weight.dtype in (torch.float32, torch.bfloat16)]
    if not linears:
        return False
    # fbgemm for bfloat16 if every weight fits float16's range (65504): all or none
    fbgemm = HAS_FP16_KERNEL and all(m.weight.dtype == torch.bfloat16 and m.weight.abs().max() <= 65504 for m in linears)
    try:
        packed = [pack_weight(m, fbgemm) for m in linears]
    except (AttributeError, NotImplementedError, RuntimeError):  # a build or a CPU without these kernels
        return False
    for module, weight in zip(linears, packed):  # lm_head shares wte's weight; wte's lookups use the original
        module.packed_weight = weight
        module.__class__ = PackedLinear
    if fbgemm:
        model.apply(lambda m: m.float() if isinstance(m, nn.LayerNorm) else None)
    return True


# int8 kernel that reads the int8 bytes directly (a private op, so behind a check; plain form otherwise)
HAS_INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """
    A Linear with weight-only int8 weights for generation: per output channel, symmetric, weight ~ int8 * scales
    (the scales, like the bias, in the activation dtype, as .to(dtype) casts them and not the int8). On a CPU
    with bfloat16 activations a kernel reads the int8 bytes directly; elsewhere F.linear on the weight cast to
    x's dtype, times the scales, the form torch.compile fuses on CUDA (as in gpt-fast).
    """

    def __init__(self, linear):
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127       # (out,): the largest weight becomes +-127
        self.register_buffer("weight", torch.round(w / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias

    def forward(self, x):
        if self.training:
            raise RuntimeError("int8 weights are for generation and cannot be trained: call model.eval() after "
                               "quantize_int8_, and train the float model")
        K = self.weight.size(1)
        if HAS_INT8_KERNEL and x.device.type == "cpu" and x.dtype == torch.bfloat16 and K % 16 == 0:
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, K), self.weight, self.scales).view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return y if self.bias is None else y + self.bias


def quantize_problem(quantize, device_type, dtype):
    """What is wrong with quantize for generation on device_type in dtype (a name), or None."""
    if quantize not in (None, "int8"):
        return f"quantize={quantize!r} must be int8 or None"
    if quantize and device_type == "cpu" and dtype != "bfloat16":
        return (f"quantize=int8 on a CPU needs dtype=bfloat16 (got {dtype}): its int8 kernel takes bfloat16 "
                f"activations, and without it int8 is slower than {dtype}")
    return None


def quantize_int8_(model):
    """
    For generation: every Linear, lm_head included, becomes an Int8Linear, half the bytes per token of
    bfloat16. lm_head is the largest matrix (GPT-2's 50257 x 768, a third of the weights), read at every
    token, so it is quantized too; the embedding keeps its float weight (tied lm_head gets an int8 copy), as
    a lookup reads only one row per token. Quantize the float32 model, then cast it (.to(dtype) sets the
    scales' dtype) and pack. Returns the model.
    """
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in (nn.Linear, PackedLinear):
                setattr(parent, name, Int8Linear(child).train(child.training))
    return model


def prepare_for_generation_(model, device, dtype, quantize=None):
    """
    The model as sample.py and bench.py generate with it: in eval mode, with int8 weights if quantize is 'int8'
    (quantized from the float weights, so before the cast, which gives the scales dtype), cast to device and
    dtype (decoding reads each weight once per token: fewer bytes, more tokens/s), and on a CPU with its
    Linears packed, last. Returns the model.
    """
    model.eval()
    if quantize:
        quantize_int8_(model)
    model.to(device=device, dtype=dtype)
    if torch.device(device).type == "cpu":
        pack_weights_for_cpu_(model)
    return model
