"""The PRM stage: train the PRM of a run on its labels (split by task, early stopping), evaluate it, drift set.

    train_prm(labels, cfg, model_cfg, out_dir) -> PRMTrainResult     split by task, early stopping, best checkpoint
    run_prm(cfg, run_dir)                                            what ``prmlab train-prm`` and notebook 02 call
    measure_drift(cfg, run_dir, prm, n_tasks)                        the PRM on an RL checkpoint's samples vs the base's
    label_drift_set(cfg, run_dir, ...)                               the temperature proxy's labels (no RL yet)
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prmlab.config import Config, ModelConfig, PRMConfig
from prmlab.errors import ExecutionNotAllowed, MissingArtifact, NotEnoughData
from prmlab.models import load_base_model, load_tokenizer, policy_model, use_adapter
from prmlab.prm.data import Example, batches, collate, select_data, split_by_task, task_pass_rates
from prmlab.prm.baselines import quality
from prmlab.prm.metrics import bootstrap_interval, evaluate, first_error_auc, flatten, line_accuracy
from prmlab.prm.model import PRM, new_prm, prm_loss, raw_to_score, save_prm
from prmlab.records import LineLabels, LineScores, Task, read_jsonl, write_jsonl
from prmlab.runs import init_run_dir, log_metrics, policy_checkpoint, provenance, record_sandbox, seed_everything
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


def prm_is_current(out_dir: str | Path, prm_cfg: PRMConfig, labels_path: str | Path) -> bool:
    """True when ``out_dir`` holds a PRM trained with ``prm_cfg`` after ``labels_path`` last changed (so training it
    again would reproduce it: what the pipeline and the notebooks skip); False when anything is missing or older."""
    out_dir, labels_path = Path(out_dir), Path(labels_path)
    result_file, config_file = out_dir / "result.json", out_dir / "config.json"
    if not (result_file.exists() and config_file.exists() and labels_path.exists()):
        return False
    if result_file.stat().st_mtime < labels_path.stat().st_mtime:
        return False
    saved = json.loads(config_file.read_text(encoding="utf-8")).get("prm")
    return saved == json.loads(json.dumps(dataclasses.asdict(prm_cfg)))


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


# ----------------------------------------------------------------------------------------------------------------
# accuracy under policy drift: the PRM on samples of a later policy against samples of the base, same held-out tasks

DRIFT_DIR = "drift"


@dataclass(frozen=True)
class DriftPolicy:
    """The policy whose samples measure the PRM under drift: an RL checkpoint, or (no RL yet) the temperature proxy."""

    name: str
    """``rl/<variant>[/<checkpoint>]`` (:func:`prmlab.runs.policy_checkpoint`), ``base``, or ``base@T<temperature>``."""
    checkpoint: Path | None = None
    """The policy adapter's checkpoint directory; None: the base model."""
    temperature: float | None = None
    """Sampling temperature instead of ``cfg.sampling.temperature`` (the proxy only)."""

    @property
    def is_proxy(self) -> bool:
        return self.temperature is not None

    @property
    def slug(self) -> str:
        """Its folder name under ``run_dir/drift/``."""
        return self.name.replace("/", "-")


def drift_policy(run_dir: str | Path, temperature: float = 0.5) -> DriftPolicy:
    """The RL checkpoint whose samples measure drift: the ``sparse`` run's ``rl-100`` (the last of the checkpoints the
    paper labels), else its ``last``, else the first other variant's ``last``; with no RL checkpoint in ``run_dir``
    the fallback proxy: the base sampled at ``temperature``."""
    rl = Path(run_dir) / "rl"
    variants = ["sparse"] + sorted(p.name for p in rl.glob("*") if p.is_dir() and p.name != "sparse")
    for name in ["rl/sparse/rl-100"] + [f"rl/{v}" for v in variants]:
        ckpt = policy_checkpoint(run_dir, name)
        if (ckpt / "policy" / "adapter_model.safetensors").exists():
            return DriftPolicy(name, ckpt)
    return DriftPolicy(f"base@T{temperature:g}", None, temperature)


def _fingerprint(policy: DriftPolicy) -> dict[str, Any]:
    """What identifies the sampled policy beyond the config: its adapter file's size and modification time."""
    if policy.checkpoint is None:
        return {"policy": policy.name}
    st = (policy.checkpoint / "policy" / "adapter_model.safetensors").stat()
    return {"policy": policy.name, "checkpoint": str(policy.checkpoint), "bytes": st.st_size, "mtime": st.st_mtime}


def label_policy_samples(cfg: Config, run_dir: str | Path, policy: DriftPolicy, tasks: Sequence[Task],
                         allow_execution: bool = False, model=None, tokenizer=None,
                         progress: bool = True) -> list[LineLabels]:
    """Sample ``policy`` on ``tasks`` and label its responses exactly as the training labels are labelled (the same
    :class:`~prmlab.config.LabelConfig`: binary search, each prefix completed by the policy that wrote it), into
    ``run_dir/drift/<slug>/`` (resumable; started over when the checkpoint's weights changed)."""
    from prmlab.labels.driver import label_responses
    from prmlab.labels.stage import make_completer, sample_responses_resumable
    from prmlab.sandbox import Sandbox

    if not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("Labelling drift samples executes model-generated programs: pass "
                                  "allow_execution=True after reading docs/safety.md.")
    used = cfg if not policy.is_proxy else cfg.replace(sampling={"temperature": policy.temperature})
    out = Path(run_dir) / DRIFT_DIR / policy.slug
    stamp = out / "policy.json"
    if stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")) != _fingerprint(policy):
        shutil.rmtree(out)  # samples of earlier weights: a cache, not a result
    init_run_dir(out, used, used.seed)
    stamp.write_text(json.dumps(_fingerprint(policy), indent=2) + "\n", encoding="utf-8")
    if model is None or tokenizer is None:
        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model = model or load_base_model(cfg.model)
    sandbox_cfg = dataclasses.replace(cfg.sandbox, allow_execution=True)
    with Sandbox(sandbox_cfg, cache_dir=Path(run_dir) / DRIFT_DIR / "exec_cache") as sandbox, \
            policy_model(model, cfg.model, policy.checkpoint) as pm:
        record_sandbox(out, sandbox.provenance())
        responses = sample_responses_resumable(pm, tokenizer, tasks, used, out / "responses.jsonl", policy.name,
                                               progress=progress)
        label_responses(responses, {t.task_id: t for t in tasks}, cfg.labels, out / "labels.jsonl",
                        make_completer(pm, tokenizer, used), sandbox.run_many, progress=progress)
    wanted = {t.task_id for t in tasks}
    return [r for r in read_jsonl(out / "labels.jsonl", LineLabels) if r.task_id in wanted]


def task_bootstrap_difference(base: Sequence[LineScores], drifted: Sequence[LineScores],
                              metric: Callable[[Sequence[float], Sequence[float]], float], n_boot: int = 1000,
                              seed: int = 0) -> tuple[float, float, float]:
    """``(d, lo, hi)``: d = metric(drifted) - metric(base) over all lines, and its 95% percentile interval when the
    *tasks* are resampled (both sets resampled with the same task draw: paired by task).

        I_b ~ Uniform{tasks}^n,  d_b = metric(drifted lines of I_b) - metric(base lines of I_b)

    ``metric(scores, labels)`` is e.g. :func:`~prmlab.prm.metrics.line_accuracy`; resamples where it is nan are
    dropped.
    """
    by_task: dict[str, tuple[list[LineScores], list[LineScores]]] = {}
    for which, records in ((0, base), (1, drifted)):
        for r in records:
            by_task.setdefault(r.task_id, ([], []))[which].append(r)
    tasks = sorted(by_task)

    def on(idx) -> float:
        parts = [flatten([r for i in idx for r in by_task[tasks[i]][w]]) for w in (0, 1)]
        return metric(*parts[1]) - metric(*parts[0]) if all(p[0] for p in parts) else float("nan")

    d = on(range(len(tasks)))
    lo, hi = bootstrap_interval(lambda idx: on(idx), len(tasks), n_boot, seed=seed)
    return d, lo, hi


@dataclass
class DriftResult:
    """The PRM on samples of the base and of a drifted policy, on the same held-out tasks (``run_dir/drift/``)."""

    policy: str
    proxy: bool
    """True: the drifted policy is the temperature proxy (no RL checkpoint existed)."""
    n_tasks: int
    base: dict[str, float]
    drifted: dict[str, float]
    difference: dict[str, list[float]]
    """metric -> [drifted - base, lo, hi] (95% bootstrap over tasks, paired): ``accuracy`` (every line),
    ``auc`` (first-error AUC), ``accuracy_failing`` and ``accuracy_passing`` (the lines of failing, of passing
    responses: a policy that passes more often has more all-+1 responses, which alone moves the overall accuracy)."""
    categories: dict[str, dict[str, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        b, d = self.base, self.drifted
        acc, auc, fail, ok = (self.difference[k] for k in ("accuracy", "auc", "accuracy_failing", "accuracy_passing"))
        what = "temperature PROXY (no RL checkpoint yet)" if self.proxy else "RL checkpoint"
        return (f"PRM under drift on {self.n_tasks} held-out tasks, {self.policy} ({what}) vs base: line accuracy "
                f"{d['accuracy']:.3f} vs {b['accuracy']:.3f} ({acc[0]:+.3f} [{acc[1]:+.3f}, {acc[2]:+.3f}]), "
                f"first-error AUC {d['auc']:.3f} vs {b['auc']:.3f} ({auc[0]:+.3f} [{auc[1]:+.3f}, {auc[2]:+.3f}]), "
                f"on failing responses {d['accuracy_failing']:.3f} vs {b['accuracy_failing']:.3f} "
                f"({fail[0]:+.3f} [{fail[1]:+.3f}, {fail[2]:+.3f}]), on passing ones {d['accuracy_passing']:.3f} vs "
                f"{b['accuracy_passing']:.3f} ({ok[0]:+.3f} [{ok[1]:+.3f}, {ok[2]:+.3f}]); "
                f"{d['n_responses']:.0f} and {b['n_responses']:.0f} responses")


def measure_drift(cfg: Config, run_dir: str | Path, prm: PRM, n_tasks: int, policy: DriftPolicy | None = None,
                  temperature: float = 0.5, allow_execution: bool = False, progress: bool = True,
                  n_boot: int = 1000) -> DriftResult:
    """The PRM's accuracy on samples of a later policy against its accuracy on base samples of the same tasks.

    Both policies answer the first ``n_tasks`` held-out (eval) tasks, ``cfg.sampling.n_samples`` times each, and are
    labelled by :func:`label_policy_samples`; ``policy`` defaults to :func:`drift_policy` (the sparse RL run's last
    kept checkpoint; the temperature proxy only when the run has no RL checkpoint, flagged ``proxy``). Sampling uses
    the PRM's model (its ``policy`` adapter holds the checkpoint while sampling). The result also goes to
    ``run_dir/drift/result.json`` (the report's drift section).
    """
    policy = policy or drift_policy(run_dir, temperature)
    tasks = load_tasks(cfg.tasks, "eval")[:n_tasks]
    sets = {}
    for p in (DriftPolicy("base"), policy):
        sets[p.name] = label_policy_samples(cfg, run_dir, p, tasks, allow_execution, prm.model, prm.tokenizer,
                                            progress)
    scored = {k: prm.score_labels(v, cfg.prm.batch_size) for k, v in sets.items()}
    base, drifted = scored["base"], scored[policy.name]
    diff = {name: list(task_bootstrap_difference(base, drifted, fn, n_boot, seed=cfg.seed))
            for name, fn in (("accuracy", line_accuracy), ("auc", first_error_auc))}
    metrics = [evaluate(s) for s in (base, drifted)]
    for part, keep in (("failing", lambda r: r.meta.get("category") != "correct"),
                       ("passing", lambda r: r.meta.get("category") == "correct")):
        sub = [[r for r in s if keep(r)] for s in (base, drifted)]
        diff[f"accuracy_{part}"] = list(task_bootstrap_difference(*sub, line_accuracy, n_boot, seed=cfg.seed))
        for m, s in zip(metrics, sub):
            m[f"accuracy_{part}"] = line_accuracy(*flatten(s)) if s else float("nan")
    cats = {k: dict(Counter(r.category for r in v)) for k, v in sets.items()}
    result = DriftResult(policy.name, policy.is_proxy, len(tasks), metrics[0], metrics[1], diff, cats)
    path = Path(run_dir) / DRIFT_DIR / "result.json"
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n", encoding="utf-8")
    return result


def label_drift_set(cfg: Config, run_dir: str | Path, n_tasks: int, temperature: float, allow_execution: bool = False,
                    model=None, tokenizer=None, progress: bool = True) -> list[LineLabels]:
    """Labels of the *temperature proxy* for drift: the base sampled at ``temperature`` on the first ``n_tasks``
    held-out tasks (:func:`label_policy_samples`, in ``run_dir/drift/base@T<temperature>/``), also written to
    ``run_dir/labels_drift.jsonl`` (what ``PRMConfig.drift_labels`` can point at). Once an RL checkpoint exists,
    measure drift on it instead (:func:`measure_drift`)."""
    policy = DriftPolicy(f"base@T{temperature:g}", None, temperature)
    records = label_policy_samples(cfg, run_dir, policy, load_tasks(cfg.tasks, "eval")[:n_tasks], allow_execution,
                                   model, tokenizer, progress)
    write_jsonl(Path(run_dir) / "labels_drift.jsonl", records)
    return records
