"""The process reward model: the ``prm`` LoRA adapter plus a scalar head on the shared base model.

For a prompt x and a response y with lines 1..T, line m ending at token e_m (the token holding its last character,
:func:`prmlab.lines.token_positions_for_lines`), the PRM predicts the label of the prefix y<=m:

    R(x, y<=m) = w . h_{e_m} + b            h = last-layer hidden states with the ``prm`` adapter active

Training minimises, over the lines of a batch (neutral lines optional, see ``PRMConfig.neutral_in_loss``),

    MSE:  (1/N) sum_m (R_m - y_m)^2                                 y_m in {+1, 0, -1}   (the paper's loss)
    BCE:  (1/N) sum_m BCE(sigmoid(z_m), (y_m + 1) / 2)              option; the score is then 2 sigmoid(z_m) - 1

so scores always live on the label scale [-1, 1]. A checkpoint directory holds the adapter (peft format, in
``prm/``), the head (``head.safetensors``) and ``config.json``; the RL stage can copy both into its critic.

    train_prm(labels, cfg, model_cfg, out_dir) -> PRMTrainResult     split by task, early stopping, best checkpoint
    load_prm(dir) -> PRM;  PRM.score([(prompt, completion), ...]) -> [LineScores]
    run_prm(cfg, run_dir)                                            what ``prmlab train-prm`` and notebook 02 call
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prmlab.config import Config, ModelConfig, PRMConfig, from_dict
from prmlab.models import ScalarHead, add_adapters, hidden_states, lora_config, use_adapter
from prmlab.prm_data import (Batch, Example, batches, collate, completion_text, encode, select_data,
                             split_by_task, task_pass_rates)
from prmlab.prm_metrics import evaluate
from prmlab.records import LineLabels, LineScores, read_jsonl
from prmlab.runs import log_metrics, provenance, seed_everything

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
        """Scores of labelled responses, with their labels attached (ready for :func:`prmlab.prm_metrics.evaluate`)."""
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


@dataclass
class PRMTrainResult:
    """What :func:`train_prm` did: the best epoch, its metrics, where the checkpoint is, the per-epoch history."""

    out_dir: str
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    n_train: int
    n_val: int
    n_test: int
    data_selection: str = "full"
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    prm: PRM | None = field(default=None, repr=False)

    def __str__(self) -> str:
        t = self.test_metrics or self.val_metrics
        where = "test" if self.test_metrics else "validation"
        return (f"PRM trained on {self.n_train} responses ({self.data_selection}), best epoch {self.best_epoch} of "
                f"{self.epochs_run}, validation loss {self.best_val_loss:.4f}; {where} ({self.n_test or self.n_val} "
                f"responses): AUC {t.get('auc', float('nan')):.3f} (length-only "
                f"{t.get('baseline_auc', float('nan')):.3f}), accuracy {t.get('accuracy', float('nan')):.3f}, "
                f"MSE {t.get('mse', float('nan')):.3f} -> {self.out_dir}")


def validate(prm: PRM, records: Sequence[LineLabels], examples: Sequence[Example],
             cfg: PRMConfig) -> tuple[float, list[LineScores]]:
    """One pass over held-out responses: the line-weighted mean loss, and the scores with labels attached."""
    prm.model.eval()
    total, n = 0.0, 0.0
    out: list[LineScores] = []
    with torch.no_grad():
        for start in range(0, len(examples), cfg.batch_size):
            group = examples[start:start + cfg.batch_size]
            batch = collate(group, prm.tokenizer.pad_token_id or 0)
            raw = prm.line_outputs(batch)  # (B, L)
            targets, line_mask = batch.targets.to(raw.device), batch.line_mask.to(raw.device)
            count = float((line_mask * (1.0 if cfg.neutral_in_loss else (targets != 0).float())).sum())
            total += float(prm_loss(raw, targets, line_mask, cfg.loss, cfg.neutral_in_loss)) * count
            n += count
            s = raw_to_score(raw, cfg.loss).float().cpu()  # (B, L)
            for b, r in enumerate(records[start:start + cfg.batch_size]):
                out.append(LineScores(r.task_id, r.response_id, r.completions, tuple(s[b, :len(r.labels)].tolist()),
                                      r.labels, meta={"category": r.category, "policy": r.policy}))
    return (total / n if n else float("nan")), out


def train_step(prm: PRM, optimizer: torch.optim.Optimizer, group: Sequence[Example], cfg: PRMConfig) -> float:
    """One optimisation step on a group of examples; returns the batch loss."""
    prm.model.train()
    batch = collate(group, prm.tokenizer.pad_token_id or 0)
    with use_adapter(prm.model, prm.adapter):  # through backward: autograd skips leaves that stopped requiring grad
        raw = prm.line_outputs(batch)  # (B, L)
        loss = prm_loss(raw, batch.targets.to(raw.device), batch.line_mask.to(raw.device), cfg.loss,
                        cfg.neutral_in_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def _snapshot(prm: PRM) -> list[torch.Tensor]:
    """Copies of the trainable tensors (the best epoch's weights, kept in memory)."""
    return [p.detach().clone() for p in prm.trainable()]


def _restore(prm: PRM, snap: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, saved in zip(prm.trainable(), snap, strict=True):
            p.copy_(saved)


def train_prm(labels: Sequence[LineLabels], cfg: PRMConfig, model_cfg: ModelConfig, out_dir: str | Path, *,
              model=None, tokenizer=None, pass_rates: dict[str, float] | None = None,
              progress: bool = True) -> PRMTrainResult:
    """Train a PRM on labelled responses; the best epoch (lowest validation loss) is saved to ``out_dir``.

    Tasks are split into validation (``val_fraction``), test (``test_fraction``) and training; data selection
    (``cfg.data_selection``, pass rates from all ``labels`` unless given) applies to the training tasks only, so
    validation and test measure the PRM on everything the policy writes. Each epoch appends a row to
    ``out_dir/metrics.jsonl`` (train and validation loss, validation AUC/accuracy); training stops after
    ``patience`` epochs without a lower validation loss. The test split is scored once, with the best weights.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    seed_everything(cfg.seed)
    val, test, train = split_by_task(labels, (cfg.val_fraction, cfg.test_fraction), seed=cfg.seed)
    rates = pass_rates if pass_rates is not None else task_pass_rates(labels)
    train = select_data(train, cfg.data_selection, rates, cfg.hard_below, cfg.easy_above)
    if not train or not val:
        raise ValueError(f"not enough data: {len(train)} training and {len(val)} validation responses after "
                         f"selection {cfg.data_selection!r} (from {len(labels)} labelled responses)")
    prm = new_prm(model_cfg, cfg.loss, model=model, tokenizer=tokenizer, seed=cfg.seed)
    train_ex = [prm.encode(r) for r in tqdm(train, desc="encoding", disable=not progress)]
    val_ex = [prm.encode(r) for r in val]
    optimizer = torch.optim.AdamW(prm.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"prm": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg), "provenance": provenance(cfg.seed),
            "n_train": len(train), "n_val": len(val), "n_test": len(test)}
    best = (math.inf, 0, _snapshot(prm))
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        groups = batches(train_ex, cfg.batch_size, shuffle_seed=cfg.seed * 1000 + epoch)
        losses = [train_step(prm, optimizer, g, cfg) for g in tqdm(groups, desc=f"PRM epoch {epoch}",
                                                                    disable=not progress, leave=False)]
        val_loss, val_scores = validate(prm, val, val_ex, cfg)
        vm = evaluate(val_scores)
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "train_loss_last": losses[-1],
               "val_loss": val_loss, "val_auc": vm["auc"], "val_accuracy": vm["accuracy"], "val_mse": vm["mse"]}
        history.append(row)
        log_metrics(out_dir, **row)
        if val_loss < best[0]:
            best = (val_loss, epoch, _snapshot(prm))
            save_prm(prm, out_dir, {**meta, "best_epoch": epoch, "val_loss": val_loss})
        elif epoch - best[1] >= cfg.patience:
            break
    _restore(prm, best[2])
    val_metrics = evaluate(prm.score_labels(val, cfg.batch_size))
    test_metrics = evaluate(prm.score_labels(test, cfg.batch_size)) if test else {}
    result = PRMTrainResult(str(out_dir), best[1], len(history), best[0], val_metrics, test_metrics, len(train),
                            len(val), len(test), cfg.data_selection, history, prm)
    (out_dir / "result.json").write_text(json.dumps(_result_json(result), indent=2) + "\n", encoding="utf-8")
    return result


def _result_json(result: PRMTrainResult) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(dataclasses.replace(result, prm=None)).items() if k != "prm"}


def run_prm(cfg: Config, run_dir: str | Path, model=None, tokenizer=None, progress: bool = True) -> PRMTrainResult:
    """Train the PRM of a run on ``run_dir/labels.jsonl`` into ``run_dir/prm/`` (``prmlab train-prm``).

    When ``cfg.prm.drift_labels`` names a labels file (relative to ``run_dir``) of responses from a different
    policy checkpoint, the best PRM is evaluated on it too and the numbers go to ``prm/drift_metrics.json``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "labels.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: label responses first (`prmlab label --preset {cfg.name} "
                                f"--allow-execution`, or notebook 01).")
    labels = read_jsonl(path, LineLabels, repair_tail=True)
    result = train_prm(labels, cfg.prm, cfg.model, run_dir / "prm", model=model, tokenizer=tokenizer,
                       progress=progress)
    if cfg.prm.drift_labels:
        drift = read_jsonl(run_dir / cfg.prm.drift_labels, LineLabels)
        metrics = evaluate(result.prm.score_labels(drift, cfg.prm.batch_size))
        (run_dir / "prm" / "drift_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return result

