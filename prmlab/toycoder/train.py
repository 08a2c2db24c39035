"""The toy-coder: a few-million-parameter Llama-style causal LM trained on CPU on the toy world's noisy corpus.

Pipeline (``train_toy_coder``): corpus (prmlab.tasks.toy_corpus) -> byte-level BPE tokenizer -> LlamaForCausalLM
-> AdamW with linear warm-up and cosine decay, loss on solution tokens only:

    L(theta) = - (1 / |C|) sum_{t in C} log p_theta(y_t | y_<t),   C = solution tokens and the closing EOS

The model continues ``task.prompt`` (which ends with a newline) with a 4-space-indented body and EOS. Newlines are
their own pre-tokens, so ``tok(prompt + completion)`` is ``tok(prompt)`` followed by ``tok(completion)``: the prompt
boundary is the same at training and at sampling time. No BOS is added (``add_special_tokens`` changes nothing).

Evaluation (``evaluate_toy_coder``, in :mod:`prmlab.toycoder.evaluate`) samples the eval split at the preset's
temperature and measures pass@1 by length through the sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prmlab.runs import provenance, seed_everything
from prmlab.tasks.toy_corpus import ToyCorpusConfig, corpus_samples

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>")


@dataclass(frozen=True)
class ToyCoderConfig:
    """How the toy-coder is built and trained (all [I]: the paper has no such model)."""

    corpus: ToyCorpusConfig = field(default_factory=ToyCorpusConfig)
    """The training corpus and its noise model. [I]"""
    vocab_size: int = 640
    """Byte-level BPE vocabulary size (256 byte symbols + merges + 3 special tokens). [I]"""
    hidden_size: int = 256
    """Model width. [I]"""
    layers: int = 4
    """Decoder layers. [I]"""
    heads: int = 4
    """Attention heads (= key/value heads). [I]"""
    intermediate_size: int = 688
    """SwiGLU MLP width. [I]"""
    max_positions: int = 512
    """Longest sequence (prompt + solution) the model is built for. [I]"""
    lr: float = 2e-3
    """Peak AdamW learning rate. [I]"""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay). [I]"""
    warmup_steps: int = 100
    """Linear warm-up steps. [I]"""
    weight_decay: float = 0.01
    """AdamW weight decay. [I]"""
    batch_size: int = 32
    """Sequences per optimisation step. [I]"""
    epochs: int = 1
    """Passes over the corpus. [I]"""
    grad_clip: float = 1.0
    """Global gradient-norm clip. [I]"""
    bf16: bool = True
    """bf16 autocast on CPU (about 2x faster on avx512_bf16 CPUs); weights stay fp32. [I]"""
    threads: int = 2
    """torch CPU threads (results are reproducible for a fixed value on the same machine). [I]"""
    seed: int = 0
    """Seed of initialisation and batch order (the corpus has its own ``corpus.seed``). [I]"""
    log_every: int = 20
    """Steps between loss-curve points. [I]"""
    init_from: str = ""
    """Directory of a trained toy-coder whose weights and tokenizer this run continues from (a second training
    stage on a fresh corpus, e.g. ``corpus.seed=1``); empty trains a new tokenizer and model from scratch. [I]"""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What ``train_toy_coder`` produced."""

    out_dir: Path
    losses: list[tuple[int, float]]
    metrics: dict[str, Any]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with bos/eos/pad tokens.

    Pre-tokenisation: newlines are isolated, digits split one by one (any number tokenizes), then the GPT-2
    byte-level regex (so 4-space indentation becomes ``'   '`` + ``' name'``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="left")


def build_model(cfg: ToyCoderConfig, tok):
    """A freshly initialised ``LlamaForCausalLM`` of ``cfg``'s shape with tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def encode_samples(samples: list[dict], tok, max_positions: int) -> list[tuple[list[int], int]]:
    """``(ids, n_prompt)`` per sample: ids = prompt + completion + EOS; samples longer than the context dropped."""
    out = []
    for s in samples:
        p = tok(s["task"].prompt, add_special_tokens=False).input_ids
        c = tok(s["completion"], add_special_tokens=False).input_ids
        ids = p + c + [tok.eos_token_id]
        if len(ids) <= max_positions:
            out.append((ids, len(p)))
    return out


def make_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Deterministic batches of indices: shuffle, sort within windows of 50 batches by length, shuffle batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(encoded: list[tuple[list[int], int]], idx: list[int], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding).  # (B, T)"""
    seqs = [encoded[i] for i in idx]
    T = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
    for b, (ids, n_prompt) in enumerate(seqs):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[b, :len(ids)] = 1
    return input_ids, mask, labels


def lr_at(step: int, total: int, cfg: ToyCoderConfig) -> float:
    """eta(step) = eta_max * step / warmup during warm-up, then
    eta_max * (r + (1 - r) * (1 + cos(pi * progress)) / 2) with r = min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_steps(model, encoded, batches, cfg: ToyCoderConfig, pad_id: int, progress: bool = True):
    """Run the optimisation; returns [(step, mean loss since the last point)] and the solution tokens seen."""
    from tqdm.auto import tqdm

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    total = len(batches) * cfg.epochs
    losses, acc, n_acc, tokens = [], 0.0, 0, 0
    model.train()
    bar = tqdm(total=total, desc="toy-coder", disable=not progress)
    for step in range(total):
        input_ids, mask, labels = collate(encoded, batches[step % len(batches)], pad_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        acc, n_acc, tokens = acc + loss.item(), n_acc + 1, tokens + int(mask.sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            losses.append((step + 1, acc / n_acc))
            bar.set_postfix(loss=f"{acc / n_acc:.3f}")
            acc, n_acc = 0.0, 0
        bar.update(1)
    bar.close()
    model.eval()
    return losses, tokens


def save_loss_curve(losses: list[tuple[int, float]], path: Path, stage_starts: Sequence[int] = ()) -> None:
    """Plot (step, loss) pairs on a log scale; a dashed line marks the first step of each later training stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (solution tokens, nats)")
    ax.set_yscale("log")
    for k, step in enumerate(stage_starts, start=2):
        ax.axvline(step, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"stage {k}", (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_title("toy-coder training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_toy_coder(cfg: ToyCoderConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Build the corpus and tokenizer, train the model and save everything into ``out_dir``.

    Writes: model weights (safetensors, fp32) + config, tokenizer files, ``train_config.json``,
    ``train_metrics.json``, ``loss_curve.png``, ``provenance.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = time.time()
    samples = corpus_samples(cfg.corpus)
    model, tok, earlier = _start(cfg, samples)
    if cfg.init_from:  # the continued model's architecture, not the defaults, goes into train_config.json
        c = model.config
        cfg = dataclasses.replace(cfg, hidden_size=c.hidden_size, layers=c.num_hidden_layers,
                                  heads=c.num_attention_heads, intermediate_size=c.intermediate_size)
    encoded = encode_samples(samples, tok, cfg.max_positions)
    batches = make_batches([len(ids) for ids, _ in encoded], cfg.batch_size, cfg.seed)
    t1 = time.time()
    losses, tokens = train_steps(model, encoded, batches, cfg, tok.pad_token_id, progress)
    t2 = time.time()
    stage_starts: list[int] = []
    if earlier:  # the loss curve continues the earlier stage's
        offset = earlier["steps"]
        losses = [tuple(x) for x in earlier["losses"]] + [(s + offset, v) for s, v in losses]
        stage_starts = [*earlier.get("stage_starts", []), offset + 1]
    _save_model(model, tok, out)
    save_loss_curve(losses, out / "loss_curve.png", stage_starts)
    metrics = {
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_samples": len(encoded), "corpus_tokens": sum(len(ids) for ids, _ in encoded),
        "solution_tokens": sum(len(ids) - n for ids, n in encoded), "steps": len(losses) and losses[-1][0],
        "tokens_seen": tokens, "final_loss": losses[-1][1], "first_loss": losses[0][1],
        "prepare_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
        "tokens_per_s": round(tokens / max(t2 - t1, 1e-9), 1), "data_seed": cfg.corpus.seed, "seed": cfg.seed,
        "losses": losses, "stage_starts": stage_starts, "init_from": cfg.init_from,
        "earlier_stage": {k: v for k, v in earlier.items() if k != "losses"} if earlier else None,
    }
    if earlier:
        metrics["steps"] = losses[-1][0]
        metrics["total_train_s"] = round(earlier.get("total_train_s", earlier["train_s"]) + t2 - t1, 1)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "provenance.json").write_text(json.dumps(provenance(cfg.seed), indent=2) + "\n")
    return TrainResult(out, losses, metrics)


def _start(cfg: ToyCoderConfig, samples: list[dict]):
    """(model, tokenizer, earlier metrics): fresh ones, or those of ``cfg.init_from`` (then train mode)."""
    if not cfg.init_from:
        tok = train_tokenizer([s["task"].prompt + s["completion"] for s in samples], cfg.vocab_size)
        return build_model(cfg, tok), tok, {}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(cfg.init_from)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    earlier = json.loads((src / "train_metrics.json").read_text()) if (src / "train_metrics.json").exists() else {}
    return model, AutoTokenizer.from_pretrained(src), earlier


def _save_model(model, tok, out: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=160)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # A tokenizer loaded from a directory (second stage) records where it was loaded from; that is not a property
    # of the tokenizer and would differ between otherwise identical saves.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    kept = {k: v for k, v in tok_cfg.items() if k not in ("is_local", "local_files_only")}
    if kept != tok_cfg:
        cfg_path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
