"""`prmlab <stage>`: command-line twins of the notebooks, calling the same library functions.

    prmlab config     --preset tiny                 print the resolved configuration as JSON
    prmlab label      --preset tiny --allow-execution   sample responses, execute them, binary-search line labels
    prmlab train-prm  --preset tiny                 train the PRM on runs/<name>/labels.jsonl
    prmlab rl         --preset tiny --variant dense+value-init --allow-execution   PPO -> runs/<name>/rl/<variant>/
    prmlab eval       --preset tiny --policy rl/sparse --allow-execution   held-out pass@1 -> runs/<name>/eval/
    prmlab best-of-n  --preset tiny --policy base --n 8 --allow-execution   PRM reranking vs random pick and oracle
    prmlab study      --preset tiny --allow-execution   every configuration over 3 seeds -> runs/<name>-study/
    prmlab report     --preset tiny                 runs/<name>/report.md and figures/ for the stages that ran
    prmlab doctor                                   the sandbox's protections on this machine and its self-test
    prmlab pipeline   --preset tiny --allow-execution   label, PRM, RL (PIPELINE_VARIANTS), drift, evaluation, report

Every command takes ``--preset``, ``--seed``, ``--run-dir`` (default ``runs/<preset>``) and repeated
``--set stage.field=value`` overrides (the value is parsed as JSON when it can be, e.g. ``--set labels.k=4``).

A mistake the library recognises (:mod:`prmlab.errors`: a bad config value, a malformed record file, execution not
allowed, a model or dataset not available offline, too little data, a run directory of another config, a missing
upstream stage) is printed as one sentence naming the fix, and the command exits with that error's code (2-8);
``--debug`` or ``PRMLAB_DEBUG=1`` shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prmlab.config import PRESETS, Config, ConfigError, preset
from prmlab.errors import MissingArtifact, PrmlabError
from prmlab.rl.stage import VARIANTS

PIPELINE_VARIANTS: tuple[str, ...] = ("sparse", "dense+value-init")
"""The RL variants the main command trains: the paper's baseline and its best configuration (the study runs all)."""
PIPELINE_DRIFT_TASKS: dict[str, int] = {"tiny": 30}
"""Held-out tasks on which the main command measures the PRM under drift (the sparse run's last checkpoint against
the base, :func:`prmlab.prm.stage.measure_drift`), per preset; other presets skip it (labelling a real model's
samples costs minutes per task on a CPU: notebooks 02 and 03 show how to run it)."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"labels.k=4"`` -> ``("labels", "k", 4)``; values are JSON when they parse, else strings."""
    key, sep, raw = text.partition("=")
    stage, dot, field = key.partition(".")
    if not sep or not dot or not stage or not field:
        raise ConfigError(f"--set expects stage.field=value (e.g. labels.k=4), got {text!r}.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return stage, field, value


def build_config(name: str, seed: int, overrides: list[str]) -> Config:
    """The preset ``name`` with ``seed`` and the ``--set`` overrides applied (validated by the dataclasses)."""
    cfg = preset(name, seed=seed)
    changes: dict[str, dict[str, Any]] = {}
    for text in overrides:
        stage, field, value = parse_override(text)
        if not hasattr(cfg, stage) or not hasattr(getattr(cfg, stage), field):
            raise ConfigError(f"--set {text!r}: the config has no field {stage}.{field}.")
        changes.setdefault(stage, {})[field] = value
    try:
        return cfg.replace(**changes)
    except TypeError as e:
        raise ConfigError(f"--set: {e}.") from e


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--preset", default="tiny", choices=PRESETS, help="configuration preset (default: tiny)")
    common.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    common.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<preset>)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="override one config field, e.g. --set labels.k=4 (repeatable)")
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: PRMLAB_DEBUG=1)")
    execution = argparse.ArgumentParser(add_help=False)
    execution.add_argument("--allow-execution", action="store_true",
                           help="allow running model-generated code in prmlab's sandbox (see docs/safety.md)")
    parser = argparse.ArgumentParser(prog="prmlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", parents=[common], help="print the resolved configuration")
    sub.add_parser("label", parents=[common, execution], help="sample, execute and label responses line by line")
    sub.add_parser("train-prm", parents=[common], help="train the process reward model on the labels")
    rl = sub.add_parser("rl", parents=[common, execution], help="LoRA-PPO of one variant on the run")
    rl.add_argument("--variant", required=True, choices=tuple(VARIANTS), help="which reward / critic set-up")
    ev = sub.add_parser("eval", parents=[common, execution], help="held-out pass@1 of a policy")
    ev.add_argument("--policy", default="base",
                    help="'base' (default), 'rl/<variant>' (its last checkpoint) or 'rl/<variant>/<checkpoint>'")
    bon = sub.add_parser("best-of-n", parents=[common, execution],
                         help="the PRM at test time: best-of-N reranking vs a random pick and the oracle")
    bon.add_argument("--policy", default="base",
                     help="'base' (default), 'rl/<variant>' (its last checkpoint) or 'rl/<variant>/<checkpoint>'")
    bon.add_argument("--n", type=int, default=8, help="candidates per task (default: 8)")
    bon.add_argument("--temperature", type=float, default=1.0,
                     help="sampling temperature of the candidates (default: 1.0; at 0.2 they mostly repeat)")
    st = sub.add_parser("study", parents=[common, execution],
                        help="the Table 1 analogue: every RL configuration over seeds, with intervals (resumable)")
    st.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    st.add_argument("--configurations", nargs="+", default=None, choices=tuple(VARIANTS),
                    help="RL configurations (default: all five)")
    st.add_argument("--no-table2", action="store_true", help="skip the Revised-Only PRM run (the paper's Table 2)")
    sub.add_parser("report", parents=[common], help="write report.md and figures for the stages that ran")
    sub.add_parser("pipeline", parents=[common, execution], help="run every stage in order, then the report")
    sub.add_parser("doctor", parents=[common], help="which sandbox protections this machine gives, and a self-test")
    return parser


def _label(cfg: Config, run_dir: Path, allow_execution: bool) -> None:
    from prmlab.labels.stage import run_labeling

    result = run_labeling(cfg, run_dir, allow_execution=allow_execution)
    print(f"[label] {result}")


def _train_prm(cfg: Config, run_dir: Path, again: bool = True) -> None:
    from prmlab.prm.stage import prm_is_current, run_prm

    if not again and prm_is_current(run_dir / "prm", cfg.prm, run_dir / "labels.jsonl"):
        print(f"[train-prm] {run_dir / 'prm'} is current (trained with this config after the labels last changed); "
              "`prmlab train-prm` trains it again")
        return
    result = run_prm(cfg, run_dir)
    print(f"[train-prm] {result}")


def _rl(cfg: Config, run_dir: Path, variant: str, allow_execution: bool) -> None:
    from prmlab.rl.stage import run_rl

    print(f"[rl] {run_rl(cfg, run_dir, variant, allow_execution=allow_execution)}")


def _drift(cfg: Config, run_dir: Path, allow_execution: bool) -> None:
    from prmlab.prm.model import load_prm
    from prmlab.prm.stage import measure_drift

    n_tasks = PIPELINE_DRIFT_TASKS.get(cfg.name, 0)
    if not n_tasks:
        print(f"[drift] skipped on the {cfg.name} preset (see notebooks 02 and 03 to measure the PRM under drift)")
        return
    prm = load_prm(run_dir / "prm")
    print(f"[drift] {measure_drift(cfg, run_dir, prm, n_tasks, allow_execution=allow_execution)}")


def _eval(cfg: Config, run_dir: Path, policy: str, allow_execution: bool) -> None:
    from prmlab.evaluation.stage import run_eval

    print(f"[eval] {run_eval(cfg, run_dir, policy, allow_execution=allow_execution)}")


def _report(run_dir: Path, preset_name: str) -> None:
    from prmlab.report import write_report

    if not (run_dir / "labels.jsonl").exists():
        raise MissingArtifact(f"{run_dir} holds no run to report on (no labels.jsonl): run the pipeline first "
                              f"(`prmlab pipeline --preset {preset_name} --allow-execution`), or pass the --run-dir "
                              f"of an existing run.")
    path = write_report(run_dir)
    print(path.read_text(encoding="utf-8"))
    print(f"[report] written to {path} (figures in {run_dir / 'figures'})")


def _doctor() -> int:
    """Print the sandbox's protections on this machine and run its self-test (known-answer, hostile and forgery
    programs checked from outside); exit status 1 when a scenario fails."""
    from prmlab.sandbox import self_test

    report = self_test()  # its text starts with the protections line
    print(report)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`~prmlab.errors.PrmlabError` becomes one line on stderr and its exit code."""
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("PRMLAB_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        return _run(args)
    except PrmlabError as e:
        if debug:
            raise
        print(f"prmlab {args.command}: {e}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace) -> int:
    cfg = build_config(args.preset, args.seed, args.overrides)
    run_dir = args.run_dir or Path("runs") / cfg.name
    if args.command == "config":
        print(json.dumps(cfg.to_dict(), indent=2))
    elif args.command == "doctor":
        return _doctor()
    elif args.command == "label":
        _label(cfg, run_dir, args.allow_execution)
    elif args.command == "train-prm":
        _train_prm(cfg, run_dir)
    elif args.command == "rl":
        _rl(cfg, run_dir, args.variant, args.allow_execution)
    elif args.command == "eval":
        _eval(cfg, run_dir, args.policy, args.allow_execution)
    elif args.command == "best-of-n":
        from prmlab.evaluation.best_of_n import run_best_of_n

        print(f"[best-of-n] {run_best_of_n(cfg, run_dir, args.policy, args.n, args.temperature, allow_execution=args.allow_execution)}")
    elif args.command == "study":
        from prmlab.evaluation.study import CONFIGURATIONS, run_study

        out = args.run_dir or Path("runs") / f"{cfg.name}-study"
        print(run_study(cfg, out, args.seeds, tuple(args.configurations or CONFIGURATIONS), not args.no_table2,
                        allow_execution=args.allow_execution))
    elif args.command == "report":
        _report(run_dir, cfg.name)
    elif args.command == "pipeline":
        _label(cfg, run_dir, args.allow_execution)
        _train_prm(cfg, run_dir, again=False)
        for variant in PIPELINE_VARIANTS:
            _rl(cfg, run_dir, variant, args.allow_execution)
        _drift(cfg, run_dir, args.allow_execution)
        for policy in ("base",) + tuple(f"rl/{v}" for v in PIPELINE_VARIANTS):
            _eval(cfg, run_dir, policy, args.allow_execution)
        _report(run_dir, cfg.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
