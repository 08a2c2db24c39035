"""The command line: config resolution and overrides (stages themselves are tested in their own modules)."""

import json

import pytest

from prmlab.cli import build_config, main, parse_override
from prmlab.config import ConfigError


def test_parse_override_reads_json_values():
    assert parse_override("labels.k=4") == ("labels", "k", 4)
    assert parse_override("model.name_or_path=Qwen/X") == ("model", "name_or_path", "Qwen/X")
    assert parse_override('labels.policies=["a","b"]') == ("labels", "policies", ("a", "b"))


@pytest.mark.parametrize("bad", ["k=4", "labels.k", "labels.=3", ".k=3"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError, match="stage.field=value"):
        parse_override(bad)


def test_build_config_applies_and_validates_overrides():
    cfg = build_config("tiny", 7, ["labels.k=4", "sampling.temperature=0.5"])
    assert cfg.labels.k == 4 and cfg.sampling.temperature == 0.5 and cfg.seed == 7
    with pytest.raises(ConfigError, match="LabelConfig.k"):
        build_config("tiny", 0, ["labels.k=0"])
    with pytest.raises(ConfigError, match="no field labels.kk"):
        build_config("tiny", 0, ["labels.kk=3"])


def test_config_command_prints_json(capsys):
    assert main(["config", "--preset", "cpu-real", "--set", "labels.k=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "cpu-real" and out["labels"]["k"] == 3


def test_invalid_override_exits_2_with_message(capsys):
    assert main(["config", "--set", "labels.k=-1"]) == 2
    assert "LabelConfig.k" in capsys.readouterr().err


def test_report_summarises_labels_and_prm(tmp_path, capsys):
    from prmlab.records import LineLabels, write_jsonl

    recs = [LineLabels(prompt="p", completions=("a = 1", "return a"), labels=(1.0, -1.0), task_id=f"t{i}",
                       response_id=f"t{i}/0", category=c, last_recoverable=1)
            for i, c in enumerate(["revised", "wrong", "wrong", "correct"])]
    write_jsonl(tmp_path / "labels.jsonl", recs)
    (tmp_path / "prm").mkdir()
    (tmp_path / "prm" / "result.json").write_text(json.dumps(
        {"test_metrics": {"auc": 0.9, "baseline_auc": 0.5, "accuracy": 0.8, "mse": 0.2},
         "history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9}]}))
    assert main(["report", "--run-dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| share wrong | 50.0% |" in text and "| PRM first-error ROC AUC (held-out tasks) | 0.900 |" in text
    assert (tmp_path / "figures" / "categories_by_length.png").exists()


def _trained_prm_dir(tmp_path, prm_cfg):
    """A run directory whose prm/ looks trained after its labels: labels.jsonl, then prm/config.json and result.json."""
    import dataclasses
    import os

    (tmp_path / "labels.jsonl").write_text("{}\n")
    (tmp_path / "prm").mkdir()
    (tmp_path / "prm" / "config.json").write_text(json.dumps({"prm": dataclasses.asdict(prm_cfg)}))
    (tmp_path / "prm" / "result.json").write_text("{}")
    t = (tmp_path / "labels.jsonl").stat().st_mtime
    os.utime(tmp_path / "prm" / "result.json", (t + 1, t + 1))
    return tmp_path


def test_prm_is_current_only_for_the_same_config_trained_after_the_labels(tmp_path):
    import os

    from prmlab.prm.stage import prm_is_current

    cfg = build_config("tiny", 0, [])
    run = _trained_prm_dir(tmp_path, cfg.prm)
    assert prm_is_current(run / "prm", cfg.prm, run / "labels.jsonl")
    assert not prm_is_current(run / "prm", cfg.replace(prm={"epochs": cfg.prm.epochs + 1}).prm, run / "labels.jsonl")
    t = (run / "prm" / "result.json").stat().st_mtime
    os.utime(run / "labels.jsonl", (t + 1, t + 1))  # labels changed after the PRM was trained
    assert not prm_is_current(run / "prm", cfg.prm, run / "labels.jsonl")
    assert not prm_is_current(tmp_path / "nothing", cfg.prm, run / "labels.jsonl")


def test_pipeline_keeps_a_current_prm_and_train_prm_trains_again(tmp_path, monkeypatch, capsys):
    """A resumed pipeline does not train the PRM again (the RL runs after it were trained with that PRM);
    `prmlab train-prm` always trains."""
    from prmlab import cli
    from prmlab.prm import stage

    cfg = build_config("tiny", 0, [])
    run = _trained_prm_dir(tmp_path, cfg.prm)
    calls = []
    monkeypatch.setattr(stage, "run_prm", lambda c, d: calls.append(d) or "trained")
    cli._train_prm(cfg, run, again=False)
    assert calls == [] and "is current" in capsys.readouterr().out
    cli._train_prm(cfg, run)
    assert calls == [run] and "[train-prm] trained" in capsys.readouterr().out
