"""The process reward model: the ``prm`` LoRA adapter plus a scalar head on the shared base model.

For a prompt x and a response y with lines 1..T, line m ending at token e_m (the token holding its last character,
:func:`prmlab.lines.token_positions_for_lines`), the PRM predicts the label of the prefix y<=m:

    R(x, y<=m) = w . h_{e_m} + b            h = last-layer hidden states with the ``prm`` adapter active

Training minimises, over the lines of a batch (neutral lines optional, see ``PRMConfig.neutral_in_loss``),

    MSE:  (1/N) sum_m (R_m - y_m)^2                                 y_m in {+1, 0, -1}   (the paper's loss)
    BCE:  (1/N) sum_m BCE(sigmoid(z_m), (y_m + 1) / 2)              option; the score is then 2 sigmoid(z_m) - 1

so scores always live on the label scale [-1, 1]. A checkpoint directory holds the adapter (peft format, in
``prm/``), the head (``head.safetensors``) and ``config.json``; the RL stage can copy both into its critic.

    new_prm(model_cfg) -> PRM;  load_prm(dir) -> PRM;  PRM.score([(prompt, completion), ...]) -> [LineScores]

Training (``train_prm``, ``run_prm``) is the stage's, :mod:`prmlab.prm.stage`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prmlab.config import ModelConfig, from_dict
from prmlab.models import ScalarHead, add_adapters, hidden_states, lora_config, use_adapter
from prmlab.prm.data import Batch, Example, batches, collate, encode
from prmlab.records import LineLabels, LineScores

ADAPTER = "prm"
HEAD_FILE = "head.safetensors"


def prm_loss(raw: torch.Tensor, targets: torch.Tensor, line_mask: torch.Tensor, kind: str = "mse",
             include_neutral: bool = True) -> torch.Tensor:
    """Mean loss over the counted lines of a batch (see the module docstring); raw = head outputs at line ends.

    raw, targets, line_mask: (B, L). A line counts when ``line_mask`` is 1 and (``include_neutral`` or y != 0).
    """
    mask = line_mask * (1.0 if include_neutral else (targets != 0).float())  # (B, L)
    if kind == "mse":
        per_line = (raw - targets) ** 2  # (R_m - y_m)^2
    elif kind == "bce":
        per_line = torch.nn.functional.binary_cross_entropy_with_logits(raw, (targets + 1) / 2, reduction="none")
    else:
        raise ValueError(f"loss must be 'mse' or 'bce', got {kind!r}")
    return (per_line * mask).sum() / mask.sum().clamp(min=1.0)  # (1/N) sum_m


def raw_to_score(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """Head output -> score on the label scale: identity (MSE) or 2 sigmoid(z) - 1 (BCE)."""
    return raw if kind == "mse" else 2 * torch.sigmoid(raw) - 1


@dataclass
class PRM:
    """A trained (or fresh) PRM: a peft model holding the ``prm`` adapter, its scalar head and the tokenizer.

    The same peft model may hold other adapters (policy, critic); every PRM call activates ``adapter`` for its
    duration and restores the previously active one after.
    """

    model: Any
    head: ScalarHead
    tokenizer: Any
    loss: str = "mse"
    track: str = "completion"
    adapter: str = ADAPTER

    def prompt_text(self, prompt: str) -> str:
        """The text before the code: the task prompt, or on the chat track the template + opened code block."""
        if self.track == "completion":
            return prompt
        from prmlab.records import Task
        from prmlab.sampling import format_prompt

        return format_prompt(Task("prm", prompt, "f", ("pass",)), self.tokenizer, self.track)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw head output at every token (with gradients when enabled).  # (B, T)

        The adapter is active (and alone trainable) only inside this call; to backpropagate into its LoRA weights,
        keep it active until after ``backward()`` (wrap both in :func:`prmlab.models.use_adapter`, as
        :func:`train_step` does): autograd does not accumulate into tensors that no longer require gradients.
        """
        with use_adapter(self.model, self.adapter):
            h = hidden_states(self.model, input_ids, attention_mask)  # (B, T, H)
            return self.head(h)  # (B, T)

    def line_outputs(self, batch: Batch) -> torch.Tensor:
        """Raw head outputs at each line's last token.  # (B, L)"""
        device = self.head.linear.weight.device
        v = self.values(batch.input_ids.to(device), batch.attention_mask.to(device))  # (B, T)
        return v.gather(1, batch.positions.to(device))  # (B, L)

    @torch.no_grad()
    def score_examples(self, examples: Sequence[Example], batch_size: int = 16, progress: bool = False) -> list[list[float]]:
        """Per-line scores of encoded examples, in order (padding-invariant: batching changes nothing)."""
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        out: list[list[float]] = []
        groups = batches(examples, batch_size)
        for group in tqdm(groups, desc="PRM scoring", disable=not progress or len(groups) < 2):
            batch = collate(group, self.tokenizer.pad_token_id or 0)
            s = raw_to_score(self.line_outputs(batch), self.loss).float().cpu()  # (B, L)
            out += [s[b, :len(e.positions)].tolist() for b, e in enumerate(group)]
        self.model.train(was_training)
        return out

    def encode(self, record: LineLabels) -> Example:
        return encode(self.tokenizer, record, self.prompt_text)

    def score(self, programs: Sequence[tuple[str, str]], batch_size: int = 16, progress: bool = False,
              ids: Sequence[tuple[str, str]] | None = None) -> list[LineScores]:
        """Scores of every line of many ``(prompt, completion)`` pairs, in batches.

        ``ids`` gives each pair's ``(task_id, response_id)`` (default ``("", str(i))``). Lines are those of
        :func:`prmlab.lines.split_lines` on the exact completion text.
        """
        from prmlab.lines import split_lines, token_positions_for_lines

        ids = list(ids) if ids is not None else [("", str(i)) for i in range(len(programs))]
        examples = []
        for (prompt, completion), (task_id, response_id) in zip(programs, ids, strict=True):
            tokens, positions = token_positions_for_lines(self.tokenizer, self.prompt_text(prompt), completion)
            examples.append(Example(tuple(tokens), tuple(positions), (0.0,) * len(positions), task_id, response_id))
        scores = self.score_examples(examples, batch_size, progress)
        return [LineScores(e.task_id, e.response_id, tuple(split_lines(c)), tuple(s))
                for e, (_, c), s in zip(examples, programs, scores)]

    def score_labels(self, records: Sequence[LineLabels], batch_size: int = 16, progress: bool = False) -> list[LineScores]:
        """Scores of labelled responses, with their labels attached (ready for :func:`prmlab.prm.metrics.evaluate`)."""
        examples = [self.encode(r) for r in records]
        scores = self.score_examples(examples, batch_size, progress)
        return [LineScores(r.task_id, r.response_id, r.completions, tuple(s), r.labels,
                           meta={"category": r.category, "policy": r.policy}) for r, s in zip(records, scores)]

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters a PRM training step updates: the ``prm`` LoRA weights and the head."""
        lora = [p for n, p in self.model.named_parameters() if f".{self.adapter}." in n and "lora_" in n]
        return lora + list(self.head.parameters())


def new_prm(model_cfg: ModelConfig, loss: str = "mse", model=None, tokenizer=None, seed: int = 0,
            reset: bool = True) -> PRM:
    """A fresh PRM: the ``prm`` adapter (identity at start) on ``model`` (or the config's base) and a zero head.

    ``model`` may be a plain causal LM (the adapter is added) or a peft model (``prm`` is added if missing; if it
    is there already, ``reset`` re-initialises its LoRA weights, B = 0, so training starts from the base model).
    """
    from peft import PeftModel

    if model is None or tokenizer is None:
        from prmlab.models import load_base_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(model_cfg)
        model = model if model is not None else load_base_model(model_cfg)
    torch.manual_seed(seed)
    if not isinstance(model, PeftModel):
        model = add_adapters(model, model_cfg, names=(ADAPTER,))
    elif ADAPTER not in model.peft_config:
        model.add_adapter(ADAPTER, lora_config(model_cfg))
    elif reset:
        for module in model.modules():
            if hasattr(module, "reset_lora_parameters") and ADAPTER in getattr(module, "lora_A", {}):
                module.reset_lora_parameters(ADAPTER, True)
    hidden = model.get_base_model().config.hidden_size
    head = ScalarHead(hidden).to(next(model.parameters()).device)
    return PRM(model, head, tokenizer, loss=loss, track=model_cfg.track)


def save_prm(prm: PRM, out_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write adapter (``out_dir/prm/``, peft format), head (``head.safetensors``) and ``config.json``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prm.model.save_pretrained(out_dir, selected_adapters=[prm.adapter])
    save_file({k: v.detach().cpu().contiguous() for k, v in prm.head.state_dict().items()}, out_dir / HEAD_FILE)
    meta = {"adapter": prm.adapter, "loss": prm.loss, "track": prm.track,
            "hidden_size": prm.head.linear.in_features, **(config or {})}
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def load_prm_weights(prm: PRM, ckpt_dir: str | Path) -> PRM:
    """Load a checkpoint's adapter and head into ``prm`` in place (same architecture)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / "config.json").read_text(encoding="utf-8"))
    device = prm.head.linear.weight.device
    adapter = load_file(ckpt_dir / meta["adapter"] / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(prm.model, adapter, adapter_name=prm.adapter)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{ckpt_dir}: adapter tensors do not fit the model: {missing[:3]}")
    prm.head.load_state_dict(load_file(ckpt_dir / HEAD_FILE, device=str(device)))
    return prm


def load_prm(ckpt_dir: str | Path, model=None, tokenizer=None) -> PRM:
    """A PRM from a checkpoint directory; on ``model`` (plain or peft, e.g. the RL model) or the config's base."""
    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / "config.json").read_text(encoding="utf-8"))
    model_cfg = from_dict(ModelConfig, meta["model"]) if "model" in meta else ModelConfig()
    prm = new_prm(model_cfg, meta.get("loss", "mse"), model=model, tokenizer=tokenizer, reset=False)
    return load_prm_weights(prm, ckpt_dir)
