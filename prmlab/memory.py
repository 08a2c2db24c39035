"""Memory estimates per preset, computed from the model's ``config.json``: one base + adapters (prmlab) against
separate models (the layouts TRL's PPOTrainer holds).

The parameter counts come from the architecture itself: the model is built on PyTorch's ``meta`` device from its
config (no weights, no download), and its modules are counted. Hub models whose weights are not here have their
public ``config.json`` shipped in ``data/model_configs/`` (:data:`SHIPPED_CONFIGS`).

Bytes per parameter, as prmlab loads a model (:func:`prmlab.models.load_base_model`, :func:`~prmlab.models.add_adapters`):

    4-bit linear weight (bitsandbytes nf4/fp4, blocks of 64):  q4 = 1/2 + 1/64 + 4/(64*256)  with double quant
                                                                q4 = 1/2 + 4/64                without
    other weights (embeddings, norms, lm_head, biases):         4  (``prepare_model_for_kbit_training`` casts
                                                                    them to fp32), or the dtype's size unquantised
    LoRA adapter of rank r on a linear layer (in, out):         r * (in + out) parameters, fp32
    a trained parameter's gradient + AdamW's two moments:       4 + 8

Estimated peak during PPO (the largest stage), for each layout:

    weights     the base model(s) as above, plus every adapter and scalar head
    training    gradient + AdamW state of what PPO trains (prmlab: the ``policy`` and ``critic`` adapters and the
                value head; the PRM is frozen)
    kv cache    2 * layers * kv_heads * head_dim * (prompt_tokens + max_new_tokens) * B * dtype bytes for one
                rollout of B = prompts_per_iteration * samples_per_prompt sequences
    logits      minibatch_size * max_new_tokens * vocab * 4: the fp32 logits of one PPO minibatch's response tokens

Other activations (which depend on gradient checkpointing, attention kernels and sequence length) are left out, so
the totals are lower bounds of a run's peak; the *comparison* between layouts is what they are for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prmlab.config import PRESETS, Config, preset

SHIPPED_CONFIGS: dict[str, str] = {
    "toy-coder": "toy-coder/config.json",
    "smollm2-135m-instruct": "model_configs/SmolLM2-135M-Instruct.config.json",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": "model_configs/Qwen2.5-Coder-1.5B-Instruct.config.json",
    "Qwen/Qwen2.5-7B-Instruct": "model_configs/Qwen2.5-7B-Instruct.config.json",
}
"""Model name -> its ``config.json`` under ``data/`` (the hub ones with their source URL in ``model_configs/SOURCES.md``)."""
PROMPT_TOKENS = 512
"""Prompt length assumed for the rollout KV cache (a chat-templated HumanEval or MBPP prompt is 150-400 tokens)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30
LAYOUTS: tuple[str, ...] = ("prmlab", "separate-4bit", "trl")
"""``prmlab``: one base, adapters ``policy``/``prm``/``critic``, reference = adapters off. ``separate-4bit``: four
bases (policy, reference, critic, reward) quantised like prmlab's, LoRA on policy, critic and reward.
``trl``: TRL's PPOTrainer with ``peft_config`` (policy = base + LoRA, reference = adapter off) and separate value
and reward models in the compute dtype, the value model trained in full (as bench/bench_ppo_trl.py runs it)."""


def load_model_config(name_or_path: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model: a shipped one (:data:`SHIPPED_CONFIGS`) or a local directory's."""
    from prmlab.models import data_dir as default_data_dir

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / SHIPPED_CONFIGS[name_or_path] if name_or_path in SHIPPED_CONFIGS else Path(name_or_path) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"No config.json for {name_or_path!r} at {path}; ship it under data/model_configs/.")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a causal LM by how prmlab stores them (tied embeddings counted once)."""

    quantizable: int
    """Weights of the decoder's linear layers (4-bit under ``load_in_4bit``; bitsandbytes leaves ``lm_head``)."""
    other: int
    """Everything else: embeddings, norms, an untied ``lm_head``, biases."""
    lora: int
    """One LoRA adapter on the config's target modules: sum over wrapped layers of r * (in + out)."""
    hidden: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def total(self) -> int:
        return self.quantizable + self.other


def param_counts(config: dict[str, Any], lora_r: int, targets: tuple[str, ...]) -> ParamCounts:
    """Count the parameters of the architecture ``config`` describes, built on the ``meta`` device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    quantizable = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head" and not name.endswith(".lm_head"):
            quantizable += module.weight.numel()
            if name.rsplit(".", 1)[-1] in targets:
                lora += lora_r * (module.in_features + module.out_features)
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return ParamCounts(quantizable=quantizable, other=total - quantizable, lora=lora, hidden=hf_config.hidden_size,
                       layers=hf_config.num_hidden_layers, kv_heads=getattr(hf_config, "num_key_value_heads", heads),
                       head_dim=head_dim, vocab=hf_config.vocab_size)


def q4_bytes(double_quant: bool) -> float:
    """Bytes per 4-bit weight: 1/2 for the codes + the blockwise absmax (blocks of 64: fp32, or 8-bit with a second
    fp32 absmax per 256 blocks under double quantisation)."""
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)


def _base_bytes(n: ParamCounts, cfg: Config) -> float:
    m = cfg.model
    if m.load_in_4bit:
        return n.quantizable * q4_bytes(m.bnb_4bit_use_double_quant) + n.other * 4
    return n.total * DTYPE_BYTES[m.dtype]


def _activation_bytes(n: ParamCounts, cfg: Config) -> tuple[float, float]:
    rl, dtype = cfg.rl, DTYPE_BYTES[cfg.model.dtype]
    batch = rl.prompts_per_iteration * rl.samples_per_prompt
    kv = 2 * n.layers * n.kv_heads * n.head_dim * (PROMPT_TOKENS + rl.max_new_tokens) * batch * dtype
    logits = rl.minibatch_size * rl.max_new_tokens * n.vocab * 4
    return kv, logits


def estimate(cfg: Config, n: ParamCounts) -> dict[str, dict[str, float]]:
    """Bytes of each part (weights, training, kv cache, logits, total) per layout in :data:`LAYOUTS`."""
    base = _base_bytes(n, cfg)
    head = n.hidden + 1
    kv, logits = _activation_bytes(n, cfg)
    dtype = DTYPE_BYTES[cfg.model.dtype]
    layouts = {
        # one base; policy, prm, critic adapters; prm and critic heads; PPO trains policy + critic + value head
        "prmlab": (base + (3 * n.lora + 2 * head) * 4, (2 * n.lora + head) * 12),
        # four bases; LoRA on policy, critic, reward (+ their heads); PPO trains policy + critic + value head
        "separate-4bit": (4 * base + (3 * n.lora + 2 * head) * 4, (2 * n.lora + head) * 12),
        # policy base + LoRA (reference = adapter off); value and reward models in the compute dtype, the value
        # model trained in full: its gradient and AdamW moments in its own dtype
        "trl": (base + n.lora * 4 + 2 * (n.total + head) * dtype, n.lora * 12 + (n.total + head) * 3 * dtype),
    }
    out = {}
    for name, (weights, training) in layouts.items():
        parts = {"weights": weights, "training": training, "kv cache": kv, "logits": logits}
        out[name] = {**parts, "total": sum(parts.values())}
    return out


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f}"


def memory_markdown(data_dir: str | Path | None = None) -> str:
    """docs/real_models.md's memory tables: every preset, every layout, in GiB (a test keeps the doc current)."""
    parts = [("| preset | model | parameters | 4-bit | weights | training state | rollout KV cache | minibatch logits "
             "| prmlab total |"), "|---|---|---|---|---|---|---|---|---|"]
    totals = [("| preset | prmlab: 1 base + 3 adapters | 4 separate 4-bit models | TRL PPOTrainer (peft policy; full "
              "value and reward models) | prmlab / TRL |"), "|---|---|---|---|---|"]
    for name in PRESETS:
        cfg = preset(name)
        n = param_counts(load_model_config(cfg.model.name_or_path, data_dir), cfg.model.lora_r,
                         cfg.model.lora_target_modules)
        est = estimate(cfg, n)
        p = est["prmlab"]
        parts.append(f"| `{name}` | {cfg.model.name_or_path} | {n.total / 1e6:,.1f} M | "
                     f"{'yes' if cfg.model.load_in_4bit else 'no'} | {_gib(p['weights'])} | {_gib(p['training'])} | "
                     f"{_gib(p['kv cache'])} | {_gib(p['logits'])} | {_gib(p['total'])} |")
        totals.append(f"| `{name}` | " + " | ".join(_gib(est[lay]["total"]) for lay in LAYOUTS) +
                      f" | {p['total'] / est['trl']['total']:.2f} |")
    return "\n".join(["GiB; prmlab's layout, by part:", "", *parts, "", "Totals per layout (GiB):", "", *totals])


if __name__ == "__main__":
    print(memory_markdown())
