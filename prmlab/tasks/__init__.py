"""Task sources: the generated toy world, HumanEval (shipped offline), and hub datasets.

:func:`load_tasks` is the one source switch every stage uses; the modules below are the sources themselves.
"""

from __future__ import annotations

from prmlab.config import TaskConfig
from prmlab.records import Task

SPLITS: tuple[str, ...] = ("train", "eval")


def load_tasks(cfg: TaskConfig, split: str) -> list[Task]:
    """The ``split`` tasks of a task config: ``"train"`` (the prompts that get sampled, labelled and trained on) or
    ``"eval"`` (held out, never labelled for training).

    toy: the generated train / eval splits (disjoint by seed); humaneval: the shipped file split by a seeded
    ``eval_fraction``; hub sources (mbpp, livecodebench): the benchmark's train split for ``"train"`` and its test
    split for ``"eval"``. ``n_train`` / ``n_eval`` cap the count.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    limit = cfg.n_train if split == "train" else cfg.n_eval
    if cfg.source == "toy":
        from prmlab.tasks.toy import toy_tasks_from_config

        return toy_tasks_from_config(cfg)[SPLITS.index(split)]
    if cfg.source == "humaneval":
        from prmlab.tasks.humaneval import load_humaneval

        return load_humaneval(split, eval_fraction=cfg.eval_fraction, seed=cfg.seed)[:limit]
    from prmlab.tasks.hub import load_hub_tasks

    return load_hub_tasks(cfg.source, "train" if split == "train" else None, limit=limit)
