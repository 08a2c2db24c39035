"""Configs: presets, JSON round trip, validation messages naming the field, documented and tagged fields."""

import dataclasses
import re
from pathlib import Path

import pytest

from prmlab import config as C


@pytest.mark.parametrize("name", C.PRESETS)
def test_preset_json_round_trip(name, tmp_path):
    cfg = C.preset(name, seed=3)
    path = tmp_path / "config.json"
    cfg.save(path)
    again = C.load_config(path)
    assert again == cfg
    assert again.seed == 3 and again.labels.seed == 3 and again.name == name


def test_tiny_preset_is_the_offline_cpu_default():
    cfg = C.preset("tiny")
    assert cfg.model.name_or_path == "toy-coder" and cfg.model.device == "cpu" and cfg.tasks.source == "toy"
    assert C.preset("cpu-real").model.load_in_4bit and C.preset("paper").labels.k == 20


def test_unknown_preset_names_the_choices():
    with pytest.raises(C.ConfigError, match="tiny"):
        C.preset("huge")


@pytest.mark.parametrize("cls, kwargs, field", [
    (C.LabelConfig, {"k": 0}, "LabelConfig.k"),
    (C.LabelConfig, {"method": "exhaustive"}, "LabelConfig.method"),
    (C.LabelConfig, {"completion_temperature": 0.0}, "LabelConfig.completion_temperature"),
    (C.SamplingConfig, {"top_p": 0.0}, "SamplingConfig.top_p"),
    (C.SamplingConfig, {"temperature": -1.0}, "SamplingConfig.temperature"),
    (C.SandboxConfig, {"timeout_s": 0}, "SandboxConfig.timeout_s"),
    (C.SandboxConfig, {"workers": -1}, "SandboxConfig.workers"),
    (C.TaskConfig, {"min_lines": 1}, "TaskConfig.min_lines"),
    (C.TaskConfig, {"min_lines": 9, "max_lines": 4}, "TaskConfig.min_lines"),
    (C.PRMConfig, {"data_selection": "everything"}, "PRMConfig.data_selection"),
    (C.PRMConfig, {"hard_below": 0.9, "easy_above": 0.5}, "PRMConfig.hard_below"),
    (C.ModelConfig, {"bnb_4bit_quant_type": "int4"}, "ModelConfig.bnb_4bit_quant_type"),
    (C.ModelConfig, {"lora_r": 0}, "ModelConfig.lora_r"),
])
def test_invalid_values_name_the_field(cls, kwargs, field):
    with pytest.raises(C.ConfigError) as e:
        cls(**kwargs)
    msg = str(e.value)
    assert msg.startswith(field + " ") and msg.endswith(".")


def test_unknown_key_in_json_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"name": "x", "labels": {"kk": 3}}')
    with pytest.raises(C.ConfigError, match="kk"):
        C.load_config(path)


def test_configs_are_frozen():
    cfg = C.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.labels.k = 3  # type: ignore[misc]


def test_replace_changes_one_stage():
    cfg = C.preset("tiny").replace(labels={"k": 4})
    assert cfg.labels.k == 4 and cfg.sampling == C.preset("tiny").sampling


@pytest.mark.parametrize("cls", C.STAGE_CLASSES)
def test_every_field_has_a_tagged_docstring(cls):
    docs = C.field_docs(cls)
    for f in dataclasses.fields(cls):
        assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
        assert re.search(r"\[(P|R|I)\]", docs[f.name]), f"{cls.__name__}.{f.name} docstring lacks a [P]/[R]/[I] tag"


def test_docs_paper_map_is_current():
    path = Path(__file__).resolve().parent.parent / "docs" / "paper_map.md"
    assert path.read_text() == C.paper_map_markdown() + "\n", "regenerate: python -m prmlab.config > docs/paper_map.md"
