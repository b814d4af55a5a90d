"""A tiny causal transformer language model and its character tokenizer.

It is a stand-in for real inference: small enough to run on a CPU in tests, real enough
(attention, KV-free autoregressive decoding, streaming) to exercise the worker's paths on
a GPU. Its weights come from a fixed seed unless a checkpoint is given, so the same prompt
and sampling seed give the same text on CPU.

Tokenizer: one token per character over newline plus printable ASCII (space..'~'), so any
output, even from random weights, is printable. Other characters in a prompt are encoded
as '?'. A prompt longer than the context keeps its last `CONTEXT` tokens; it is still
counted in full as input tokens, since the agent sent them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
_UNKNOWN = _INDEX["?"]
WEIGHT_SEED = 20240611  # the fixed seed of the built-in random weights


@dataclass(frozen=True)
class Config:
    vocab_size: int = len(VOCAB)
    context: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_mlp: int = 512


CONFIG = Config()


def encode(text: str) -> list[int]:
    return [_INDEX.get(ch, _UNKNOWN) for ch in text]


def decode(token_ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in token_ids)


class _Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.ln1(x)).view(batch, length, 3, self.n_heads, width // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, length, head_dim)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, cfg: Config = CONFIG):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of the next token after the last position: (batch, vocab)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, -1]))


def build_model(seed: int = WEIGHT_SEED, cfg: Config = CONFIG) -> TinyLM:
    """Random weights from `seed`, built on the CPU (the same weights for every device).
    The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyLM(cfg)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    """What a worker advertises as the model's size (agents prefer smaller models)."""
    return sum(p.numel() for p in model.parameters())


def _config(values: dict) -> Config:
    cfg = Config(**{k: int(v) for k, v in values.items()})
    if cfg.vocab_size != len(VOCAB) or min(cfg.context, cfg.d_model, cfg.n_heads,
                                           cfg.n_layers, cfg.d_mlp) < 1 \
            or cfg.d_model % cfg.n_heads:
        raise ValueError("not a tiny LM configuration")
    return cfg


def load_checkpoint(path: str | Path) -> TinyLM:
    """A model from a `save_checkpoint` file (its own `Config`), or from a bare
    `torch.save(model.state_dict())` file of the default `Config`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg, state = CONFIG, saved
    if isinstance(saved, dict) and set(saved) == {"config", "state_dict"}:
        cfg, state = _config(saved["config"]), saved["state_dict"]
    model = build_model(cfg=cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_checkpoint(path: str | Path, model: TinyLM | None = None) -> None:
    """Save `model` (default: the built-in fixed-seed weights) and its `Config` in the
    format that `load_checkpoint` and `Runtime(checkpoints=...)` read."""
    model = model or build_model()
    torch.save({"config": dict(vars(model.cfg)), "state_dict": model.state_dict()}, path)


def generate(
    model: TinyLM,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    on_token: Callable[[int], None],
) -> list[int]:
    """Decode token by token, calling `on_token(id)` as each one is chosen (it may raise to
    stop). Greedy when temperature is 0, else sampling with a generator seeded by `seed`.
    Without a KV cache each step reruns the window: simple, and cheap at this size."""
    device = next(model.parameters()).device
    context = model.cfg.context
    # An empty prompt starts from a newline, like the start of a document.
    window = (prompt_ids or [_INDEX["\n"]])[-context:]
    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[int] = []
    with torch.inference_mode():
        ids = torch.tensor([window], dtype=torch.long, device=device)
        for _ in range(max_new_tokens):
            logits = model(ids[:, -context:])[0].float()
            if temperature == 0:
                token = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            out.append(token)
            on_token(token)
            ids = torch.cat([ids[:, -(context - 1):], ids.new_tensor([[token]])], dim=1)
    return out
