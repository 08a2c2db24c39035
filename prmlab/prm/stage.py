"""The PRM stage: train the PRM of a run on its labels (split by task, early stopping), evaluate it, drift set.

    train_prm(labels, cfg, model_cfg, out_dir) -> PRMTrainResult     split by task, early stopping, best checkpoint
    run_prm(cfg, run_dir)                                            what ``prmlab train-prm`` and notebook 02 call
    label_drift_set(cfg, run_dir, ...)                               labels of a shifted policy, for PRM drift
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

from prmlab.config import Config, ModelConfig, PRMConfig
from prmlab.errors import MissingArtifact, NotEnoughData
from prmlab.models import use_adapter
from prmlab.prm.data import Example, batches, collate, select_data, split_by_task, task_pass_rates
from prmlab.prm.baselines import quality
from prmlab.prm.metrics import evaluate
from prmlab.prm.model import PRM, new_prm, prm_loss, raw_to_score, save_prm
from prmlab.labels.stage import run_labeling
from prmlab.records import LineLabels, LineScores, read_jsonl, write_jsonl
from prmlab.runs import log_metrics, provenance, seed_everything
from prmlab.tasks import load_tasks


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
    seed_everything(cfg.seed)
    val, test, train = split_by_task(labels, (cfg.val_fraction, cfg.test_fraction), seed=cfg.seed)
    rates = pass_rates if pass_rates is not None else task_pass_rates(labels)
    train = select_data(train, cfg.data_selection, rates, cfg.hard_below, cfg.easy_above)
    if not train or not val:  # checked before out_dir is touched: a refused run loses no earlier PRM
        raise NotEnoughData(f"Not enough data to train the PRM: {len(train)} training and {len(val)} validation "
                            f"responses after selection {cfg.data_selection!r} (from {len(labels)} labelled "
                            f"responses); label more tasks (--set tasks.n_train=...) or use --set "
                            f"prm.data_selection=full.")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
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
    test_scores = prm.score_labels(test, cfg.batch_size) if test else []
    test_metrics = evaluate(test_scores) if test else {}
    if test:  # within/across responses, beside the baselines fitted on the training split (issue 16)
        test_metrics.update(quality(test_scores, train, test, seed=cfg.seed))
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
        raise MissingArtifact(f"{path} does not exist: label responses first (`prmlab label --preset {cfg.name} "
                              f"--allow-execution`, or notebook 01).")
    labels = read_jsonl(path, LineLabels, repair_tail=True)
    result = train_prm(labels, cfg.prm, cfg.model, run_dir / "prm", model=model, tokenizer=tokenizer,
                       progress=progress)
    if cfg.prm.drift_labels:
        drift = read_jsonl(run_dir / cfg.prm.drift_labels, LineLabels)
        metrics = evaluate(result.prm.score_labels(drift, cfg.prm.batch_size))
        (run_dir / "prm" / "drift_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return result


def label_drift_set(cfg: Config, run_dir: str | Path, n_tasks: int, temperature: float, allow_execution: bool = False,
                    model=None, tokenizer=None, progress: bool = True) -> list[LineLabels]:
    """Labels of a *shifted* policy's responses on held-out tasks, for the PRM's accuracy under policy drift.

    The policy is the base checkpoint sampled at ``temperature`` (instead of ``cfg.sampling.temperature``) with
    another seed: a stand-in for a later RL checkpoint until one exists (then label that checkpoint's responses
    and pass them instead). Labelling is the same as for the training data (same best-of-K completer), in
    ``run_dir/drift/``; the records are returned with ``policy = "<policy>@T<temperature>"`` and also written to
    ``run_dir/labels_drift.jsonl`` (what ``PRMConfig.drift_labels`` can point at).
    """
    run_dir = Path(run_dir)
    shifted = cfg.replace(sampling={"temperature": temperature, "seed": cfg.sampling.seed + 1})
    tasks = load_tasks(cfg.tasks, "eval")[:n_tasks]
    run_labeling(shifted, run_dir / "drift", allow_execution=allow_execution, progress=progress, model=model,
                 tokenizer=tokenizer, tasks=tasks)
    wanted = {t.task_id for t in tasks}
    records = [dataclasses.replace(r, policy=f"{r.policy}@T{temperature:g}")
               for r in read_jsonl(run_dir / "drift" / "labels.jsonl", LineLabels) if r.task_id in wanted]
    write_jsonl(run_dir / "labels_drift.jsonl", records)
    return records
