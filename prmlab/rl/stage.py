"""The RL stage: variants, model set-up (value initialisation from the PRM), checkpoints and resume.

    run_rl(cfg, run_dir, variant) -> RLResult         what ``prmlab rl --variant ...`` and notebook 03 call

    run_dir/rl/<variant>/
        config.json, provenance.json   the whole Config with the variant's switches applied (init_run_dir)
        metrics.jsonl                  one row per PPO iteration (:func:`prmlab.rl.loop.ppo_iteration`)
        checkpoints/last/              the resumable state, every ``checkpoint_every`` iterations and at the end
        checkpoints/rl-25 ... rl-100/  ``keep_checkpoints`` evenly spaced ones (policy for labelling)

A checkpoint holds the ``policy`` and ``critic`` adapters (peft format, ``policy/`` and ``critic/``), the value
head (``value_head.safetensors``) and ``trainer.pt`` (optimizer state, torch RNG state, iterations done). Every
random draw of an iteration is derived from (seed, iteration, ...) (:mod:`prmlab.rl.loop`), so a run killed at any
moment and restarted reloads ``last``, drops the metrics rows of the iterations after it, and recomputes exactly
what the uninterrupted run computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prmlab.config import Config, RLConfig
from prmlab.errors import ExecutionNotAllowed, MissingArtifact
from prmlab.models import ROLES, ScalarHead, add_adapters, copy_adapter, load_adapter_weights
from prmlab.records import Task
from prmlab.rl.loop import Execute, PPOState, make_optimizer, ppo_iteration, prompt_mix
from prmlab.runs import derive_seed, init_run_dir, log_metrics, record_sandbox, seed_everything
from prmlab.tasks import load_tasks

VARIANTS: dict[str, dict[str, bool]] = {
    "sparse": {},  # outcome reward only, fresh critic (the paper's baseline)
    "value-init": {"value_init": True},  # critic adapter + head copied from the PRM
    "dense": {"dense": True},  # + the PRM's line rewards at line ends
    "dense+value-init": {"dense": True, "value_init": True},  # both (the paper's best)
    "partial-credit": {"partial_credit": True},  # outcome = fraction of tests passed (reviewers' baseline)
}
"""Variant -> the RLConfig switches it turns on (``dense``, ``value_init``, ``partial_credit``; the rest off)."""
SWITCHES: tuple[str, ...] = ("dense", "value_init", "partial_credit")
HEAD_FILE = "value_head.safetensors"
TRAINER_FILE = "trainer.pt"


@dataclass(frozen=True)
class RLResult:
    """What :func:`run_rl` did: where, how many iterations, the first and last rows of metrics, checkpoints."""

    variant: str
    out_dir: str
    iterations: int
    first: dict[str, Any]
    last: dict[str, Any]
    checkpoints: tuple[str, ...]
    seconds: float

    def __str__(self) -> str:
        f, la = self.first, self.last
        return (f"RL {self.variant}: {self.iterations} iterations, training pass rate {f.get('pass_rate', 0):.3f} "
                f"(first) -> {la.get('pass_rate', 0):.3f} (last), return {la.get('return_total', 0):+.3f} "
                f"(outcome {la.get('return_outcome', 0):+.3f}, PRM {la.get('return_prm', 0):+.3f}, KL "
                f"{la.get('return_kl', 0):+.3f}), {self.seconds:.0f} s this call -> {self.out_dir}")


def variant_config(cfg: RLConfig, variant: str) -> RLConfig:
    """``cfg`` with the variant's switches (all of ``SWITCHES`` off unless the variant turns them on)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown RL variant {variant!r}; expected one of {tuple(VARIANTS)}")
    return dataclasses.replace(cfg, **{**{s: False for s in SWITCHES}, **VARIANTS[variant]})


def kept_checkpoints(cfg: RLConfig) -> dict[int, str]:
    """Iteration -> name of the evenly spaced checkpoints: round(I k / K) -> ``rl-{round(100 k / K)}``, k = 1..K."""
    K, n = cfg.keep_checkpoints, cfg.iterations
    return {max(1, round(n * k / K)): f"rl-{round(100 * k / K)}" for k in range(1, K + 1)}


# ----------------------------------------------------------------------------------------------------------------
# model set-up


def _peft_model(model, cfg: Config):
    """A peft model with the policy, prm and critic adapters on ``model`` (plain or already peft)."""
    return add_adapters(model, cfg.model, ROLES)


def _reset_adapter(model, name: str) -> None:
    """Re-initialise adapter ``name`` to the identity (LoRA B = 0, A from the current torch RNG)."""
    for module in model.modules():
        if hasattr(module, "reset_lora_parameters") and name in getattr(module, "lora_A", {}):
            module.reset_lora_parameters(name, True)


def build_state(cfg: Config, rl: RLConfig, run_dir: Path, model, tokenizer) -> PPOState:
    """The PPO state of a fresh run: policy = base, critic fresh or copied from the run's PRM, optimizer.

    The run's PRM (``run_dir/prm``) is loaded into the ``prm`` adapter when the variant needs it (dense reward or
    value init); without it, :class:`MissingArtifact` names the command that trains it.
    """
    from prmlab.prm.model import load_prm

    model = _peft_model(model, cfg)
    prm_head = None
    if rl.dense or rl.value_init:
        prm_dir = run_dir / "prm"
        if not (prm_dir / "config.json").exists():
            raise MissingArtifact(f"{prm_dir} holds no trained PRM, which RL with the dense reward or value "
                                  f"initialisation needs: train the PRM first: `prmlab train-prm --preset "
                                  f"{cfg.name} --run-dir {run_dir}`.")
        prm = load_prm(prm_dir, model=model, tokenizer=tokenizer)
        prm_head = prm.head.requires_grad_(False)
    torch.manual_seed(derive_seed(rl.seed, "rl-init"))  # the same fresh adapters whatever ran before
    for name in ("policy", "critic"):
        _reset_adapter(model, name)
    device = next(model.parameters()).device
    value_head = ScalarHead(model.get_base_model().config.hidden_size).to(device)  # fresh: zero
    if rl.value_init:
        copy_adapter(model, "prm", "critic")  # critic LoRA <- prm LoRA
        value_head.load_state_dict(prm_head.state_dict())  # value head <- PRM head
    model.eval()
    return PPOState(model, tokenizer, value_head, make_optimizer(model, value_head, rl), prm_head=prm_head,
                    track=cfg.model.track)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(state: PPOState, path: Path) -> Path:
    """Write the resumable state into ``path`` atomically (a temporary directory renamed over it)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state.model.save_pretrained(tmp, selected_adapters=["policy", "critic"])
    save_file({k: v.detach().cpu().contiguous() for k, v in state.value_head.state_dict().items()}, tmp / HEAD_FILE)
    torch.save({"optimizer": state.optimizer.state_dict(), "rng": torch.get_rng_state(),
                "iteration": state.iteration}, tmp / TRAINER_FILE)
    (tmp / "state.json").write_text(json.dumps({"iteration": state.iteration}) + "\n", encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_checkpoint(state: PPOState, path: Path) -> None:
    """Restore adapters, value head, optimizer, RNG and the iteration counter from ``path`` in place."""
    from safetensors.torch import load_file

    for name in ("policy", "critic"):
        load_adapter_weights(state.model, path, name)
    device = state.value_head.linear.weight.device
    state.value_head.load_state_dict(load_file(path / HEAD_FILE, device=str(device)))
    trainer = torch.load(path / TRAINER_FILE, weights_only=True)
    state.optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["rng"])
    state.iteration = int(trainer["iteration"])


def _truncate_metrics(out_dir: Path, done: int) -> None:
    """Keep the metrics rows of iterations 1..done only (a killed run may have logged some after its checkpoint)."""
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line
            continue
        if row.get("iteration", 0) <= done:
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# the stage


def run_rl(cfg: Config, run_dir: str | Path, variant: str, allow_execution: bool = False, progress: bool = True,
           model=None, tokenizer=None, *, tasks: Sequence[Task] | None = None, execute: Execute | None = None,
           stop_after: int | None = None) -> RLResult:
    """PPO of ``variant`` (:data:`VARIANTS`) on a run directory, into ``run_dir/rl/<variant>/``; resumable.

    ``model``/``tokenizer``/``tasks`` default to the config's (the base model is loaded once; the adapters are
    added or reset). ``execute`` replaces the sandbox (a stub in tests); otherwise programs run in the sandbox,
    which needs ``allow_execution``. ``stop_after`` ends this call after that many iterations (a later call
    continues). Rerunning a finished run does nothing but report it.
    """
    start = time.time()
    rl = variant_config(cfg.rl, variant)
    cfg = dataclasses.replace(cfg, rl=rl)
    run_dir = Path(run_dir)
    if execute is None and not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("RL executes model-generated programs: pass --allow-execution (or "
                                  "allow_execution=True) after reading docs/safety.md.")
    if model is None or tokenizer is None:
        from prmlab.models import load_base_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model = model if model is not None else load_base_model(cfg.model)
    state = build_state(cfg, rl, run_dir, model, tokenizer)  # before touching out_dir: a refused run writes nothing
    out_dir = init_run_dir(run_dir / "rl" / variant, cfg, rl.seed)
    last = out_dir / "checkpoints" / "last"
    if (last / TRAINER_FILE).exists():
        load_checkpoint(state, last)
    else:
        seed_everything(rl.seed)
    _truncate_metrics(out_dir, state.iteration)
    mix = prompt_mix(list(tasks) if tasks is not None else load_tasks(cfg.tasks, "train"), rl)
    keep = kept_checkpoints(rl)
    end = rl.iterations if stop_after is None else min(rl.iterations, state.iteration + stop_after)
    first, row = _read_first(out_dir), {}
    with _executor(cfg, run_dir, execute) as run_many:
        from tqdm.auto import tqdm

        bar = tqdm(range(state.iteration, end), desc=f"RL {variant}", disable=not progress,
                   initial=state.iteration, total=rl.iterations)
        for _ in bar:
            row = ppo_iteration(state, rl, mix, run_many, token_healing=cfg.sampling.token_healing)
            log_metrics(out_dir, **row)
            first = first or row
            bar.set_postfix(pass_rate=f"{row['pass_rate']:.2f}", kl=f"{row['kl_ref']:.3f}")
            i = state.iteration
            if i % rl.checkpoint_every == 0 or i == rl.iterations or i in keep:
                save_checkpoint(state, last)
            if i in keep:  # an evenly spaced checkpoint for labelling (the paper's PRM data)
                _copy_atomically(last, out_dir / "checkpoints" / keep[i])
    row = row or _read_last(out_dir)
    names = tuple(n for n in keep.values() if (out_dir / "checkpoints" / n).exists())
    return RLResult(variant, str(out_dir), state.iteration, first or {}, row, names, time.time() - start)


def _copy_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_first(out_dir: Path) -> dict[str, Any]:
    rows = _read_rows(out_dir)
    return rows[0] if rows else {}


def _read_last(out_dir: Path) -> dict[str, Any]:
    rows = _read_rows(out_dir)
    return rows[-1] if rows else {}


@contextlib.contextmanager
def _executor(cfg: Config, run_dir: Path, execute: Execute | None) -> Iterator[Execute]:
    """``run_many``: the given stub, or a sandbox whose results are cached in ``run_dir/exec_cache``."""
    if execute is not None:
        yield execute
        return
    from prmlab.sandbox import Sandbox

    with Sandbox(dataclasses.replace(cfg.sandbox, allow_execution=True), cache_dir=run_dir / "exec_cache") as box:
        record_sandbox(run_dir / "rl", box.provenance())
        yield box.run_many
