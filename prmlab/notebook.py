"""What the notebooks call besides the stages: where the run directory is, what can be reused, plain progress.

    find_run_dir(name)            the repository's runs/<name>, wherever JupyterLab was started
    labels_of(path, ids)          the labels of exactly these responses, or None when some are missing
    saved_prm_result(out, ...)    a PRM that ``prmlab train-prm`` (or an earlier run) already trained, if current
    text_progress()               tqdm as plain text on stdout (no widgets: nothing stale after a kernel restart)

The notebooks share ``runs/<preset>`` with ``prmlab pipeline``: a notebook that finds a stage's output there reuses
it (labels are per-response and seeded per response, so the labels of a subset of tasks are the same whichever
ran first), and computes only what is missing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from prmlab.records import LineLabels, read_jsonl


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The prmlab checkout: the first directory holding pyproject.toml above ``start`` (default: the working
    directory), else the one above the installed package (an editable install), else ``start`` itself."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "prmlab").is_dir():
            return d
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    return here


def find_run_dir(name: str, run_dir: str | os.PathLike = "", start: str | os.PathLike | None = None) -> Path:
    """``run_dir`` when given, else ``<repository>/runs/<name>``: the directory ``prmlab pipeline`` writes."""
    return Path(run_dir) if str(run_dir) else repo_root(start) / "runs" / name


def labels_of(path: str | os.PathLike, ids: Iterable[str]) -> list[LineLabels] | None:
    """The records of ``path`` for the response ids ``ids`` (in that order), or None if any is missing."""
    path = Path(path)
    ids = list(ids)
    if not path.exists():
        return None
    by_id = {r.response_id: r for r in read_jsonl(path, LineLabels, repair_tail=True)}
    if not all(i in by_id for i in ids):
        return None
    return [by_id[i] for i in ids]


def saved_prm_result(out_dir: str | os.PathLike, prm_cfg, labels_path: str | os.PathLike, model=None,
                     tokenizer=None):
    """The :class:`prmlab.prm.stage.PRMTrainResult` of a PRM already trained into ``out_dir``, with the PRM loaded.

    Only when it is current: trained with the same PRM config (``prm_cfg``) after ``labels_path`` last changed.
    Otherwise None (train it then). The history is ``out_dir/metrics.jsonl``.
    """
    import dataclasses

    from prmlab.prm.model import load_prm
    from prmlab.prm.stage import PRMTrainResult, prm_is_current

    out_dir = Path(out_dir)
    if not prm_is_current(out_dir, prm_cfg, labels_path):
        return None
    result_file = out_dir / "result.json"
    data = json.loads(result_file.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(PRMTrainResult)} - {"prm", "history"}
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    return PRMTrainResult(**{k: v for k, v in data.items() if k in known}, history=history,
                          prm=load_prm(out_dir, model=model, tokenizer=tokenizer))


def text_progress() -> None:
    """Make prmlab's progress bars (``tqdm.auto``) plain text on stdout, updated at most every 2 seconds.

    Widget bars leave widget views in the saved notebook that JupyterLab cannot display after a kernel restart
    ("Error displaying widget: model not found"); text survives, and on stdout it is not mistaken for a warning.
    """
    import tqdm.auto
    import tqdm.std

    class TextProgress(tqdm.std.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("file", sys.stdout)
            kwargs.setdefault("mininterval", 2.0)
            kwargs.setdefault("ncols", 100)
            super().__init__(*args, **kwargs)

    tqdm.auto.tqdm = TextProgress
