"""Run directories record config, seed, package versions and git commit; a different config is refused."""

import json

import pytest

from prmlab.config import preset
from prmlab.runs import init_run_dir, log_metrics, provenance


def test_init_run_dir_records_everything(tmp_path):
    cfg = preset("tiny", seed=5)
    run = init_run_dir(tmp_path / "runs" / "x", cfg, seed=cfg.seed)
    saved = json.loads((run / "config.json").read_text())
    prov = json.loads((run / "provenance.json").read_text())
    assert saved["seed"] == 5 and saved["labels"]["k"] == cfg.labels.k
    assert prov["seed"] == 5 and prov["packages"]["torch"].startswith("2.13.0")
    assert "commit" in prov["git"] and prov["python"]


def test_same_config_resumes_and_different_config_is_refused(tmp_path):
    init_run_dir(tmp_path, preset("tiny"), seed=0)
    init_run_dir(tmp_path, preset("tiny"), seed=0)  # resuming is fine
    with pytest.raises(ValueError, match="labels.k"):
        init_run_dir(tmp_path, preset("tiny").replace(labels={"k": 3}), seed=0)


def test_log_metrics_appends_lines(tmp_path):
    log_metrics(tmp_path, step=1, loss=0.5)
    log_metrics(tmp_path, step=2, loss=0.25)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def test_provenance_git_commit_is_a_sha_in_a_repo():
    git = provenance(0)["git"]
    assert git["commit"] is None or len(git["commit"]) == 40
