"""The real-model path on a CPU: 4-bit gradients, the GPU presets' code path on a tiny stand-in, memory estimates."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from prmlab import config as C
from prmlab.config import ModelConfig
from prmlab.errors import NotAvailable
from prmlab.models import add_adapters, load_base_model, token_logprobs
from prmlab.rl.stage import VARIANTS, kept_checkpoints
from prmlab.runs import policy_checkpoint


def _lora_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    token_logprobs(model, ids["input_ids"], ids["attention_mask"]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_4bit_lora_gradients_survive_a_forward_without_gradients(saved_tiny):
    """A no-grad forward (sampling, validation) must not switch a CPU 4-bit layer to a kernel without a backward:
    the LoRA gradients afterwards equal those of a float model holding the dequantised 4-bit weights."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved_tiny)
    ids = tok(["def f(a, b):\n    c = a + b\n    return c\n"], return_tensors="pt")
    cfg = ModelConfig(name_or_path=str(saved_tiny), load_in_4bit=True)
    q = add_adapters(load_base_model(cfg), cfg, ("policy",))
    with torch.no_grad():
        for name, p in q.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        q(**ids)  # the forward without gradients that used to repack the weights
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        got = _lora_grads(q, ids)

    ref_base = AutoModelForCausalLM.from_pretrained(saved_tiny, dtype=torch.float32).eval()
    linears = {n.removesuffix(".base_layer"): m for n, m in q.get_base_model().named_modules()
               if isinstance(m, bnb.nn.Linear4bit)}  # peft wraps each as <name>.base_layer
    assert len(linears) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    with torch.no_grad():
        for name, module in ref_base.named_modules():
            if name in linears:
                w = linears[name].weight
                module.weight.copy_(bnb.functional.dequantize_4bit(w.data, w.quant_state).float())
    ref = add_adapters(ref_base, ModelConfig(name_or_path=str(saved_tiny)), ("policy",))
    with torch.no_grad():
        q_params = dict(q.named_parameters())
        for name, p in ref.named_parameters():
            if "lora_" in name:
                p.copy_(q_params[name])
    want = _lora_grads(ref, ids)
    assert set(got) == set(want) and any("layers.0." in n for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------- presets
REAL = ("cpu-real", "gpu", "paper")


@pytest.mark.parametrize("name", C.PRESETS)
def test_preset_stages_agree_with_each_other(name):
    """Fields that different stages must agree on: lengths, checkpoints, batches, the RL prompt mix."""
    cfg = C.preset(name, seed=3)
    assert cfg.labels.max_new_tokens >= cfg.sampling.max_new_tokens, "the oracle completes what the sampler wrote"
    assert cfg.evaluation.max_new_tokens >= cfg.rl.max_new_tokens, "evaluation must not truncate what RL trained"
    kept = kept_checkpoints(cfg.rl)
    assert len(kept) == cfg.rl.keep_checkpoints, "iterations too few for distinct evenly spaced checkpoints"
    for policy in cfg.labels.policies:  # "base" or "rl/<variant>/<kept checkpoint>" (the paper: the sparse run's)
        ckpt = policy_checkpoint("run", policy)
        assert ckpt is None or (ckpt.parts[2] in VARIANTS and ckpt.name in kept.values()), policy
    assert cfg.rl.minibatch_size <= cfg.rl.prompts_per_iteration * cfg.rl.samples_per_prompt
    assert cfg.rl.min_lines <= cfg.rl.max_lines and cfg.tasks.min_lines <= cfg.tasks.max_lines
    assert cfg.model.track == ("completion" if cfg.model.name_or_path == "toy-coder" else "chat")
    assert all(getattr(cfg, s).seed == 3 for s in ("tasks", "sampling", "labels", "prm", "rl"))
    assert cfg.evaluation.seed == 0, "one evaluation seed for every training seed (paired comparisons)"


@pytest.mark.parametrize("name", REAL)
def test_real_presets_are_4bit_instruct_models(name):
    m = C.preset(name).model
    assert m.load_in_4bit and m.track == "chat" and m.bnb_4bit_quant_type == "nf4"
    assert (m.device, m.dtype) == (("cpu", "float32") if name == "cpu-real" else ("cuda", "bfloat16"))


@pytest.mark.parametrize("name", ("gpu", "paper"))
def test_gpu_presets_keep_the_papers_knobs(name):
    cfg = C.preset(name)
    assert cfg.labels.k == 20 and (cfg.rl.lambda_pass, cfg.rl.lambda_fail) == (0.025, 0.25)
    assert (cfg.evaluation.n_samples, cfg.evaluation.temperature) == (10, 0.2)  # pass@1 at T = 0.2 x 10
    assert cfg.rl.keep_checkpoints == 4 and cfg.tasks.source == "mbpp"


def test_cpu_real_budget_fits_humaneval():
    """The cpu-real preset's task counts exist in the shipped HumanEval split, and its RL prompt mix is not empty."""
    from prmlab.tasks import load_tasks

    cfg = C.preset("cpu-real")
    train, held_out = load_tasks(cfg.tasks, "train"), load_tasks(cfg.tasks, "eval")
    assert (len(train), len(held_out)) == (cfg.tasks.n_train, cfg.tasks.n_eval)
    mix = [t for t in train if cfg.rl.min_lines <= t.n_lines <= cfg.rl.max_lines]
    assert len(mix) >= cfg.rl.prompts_per_iteration


@pytest.mark.parametrize("name", ("gpu", "paper"))
def test_gpu_presets_fail_offline_with_one_sentence(name, monkeypatch):
    """Without the hub, the gpu presets' model and tasks fail at once, naming the presets that work offline."""
    from prmlab import models
    from prmlab.tasks import hub, load_tasks

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-prmlab-cache")  # nothing cached either
    cfg = C.preset(name)
    for call in (lambda: models.load_tokenizer(cfg.model), lambda: models.load_base_model(cfg.model),
                 lambda: load_tasks(cfg.tasks, "train"), lambda: load_tasks(cfg.tasks, "eval")):
        with pytest.raises(NotAvailable) as e:
            call()
        msg = str(e.value)
        assert "'cpu-real'" in msg and "offline" in msg and msg.count(". ") == 0 and msg.endswith(".")


# ------------------------------------------------------------------------- the gpu preset on a tiny stand-in
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
MBPP_ROWS = [
    {"task_id": 601 + i, "text": f"Write a function that adds {i} to a number.",
     "code": f"def add_{i}(x):\n    y = x + {i}\n    return y", "test_list": [
         f"assert add_{i}(1) == {1 + i}", f"assert add_{i}(-{i}) == 0", f"assert add_{i}(10) == {10 + i}"],
     "test_setup_code": "", "challenge_test_list": []}
    for i in range(4)
]


@pytest.fixture(scope="module")
def chat_tiny(tmp_path_factory):
    """A random 2-layer Llama with a chat template (the chat track needs one) and room for chat prompts."""
    from prmlab.testing import tiny_test_model

    model, tok = tiny_test_model(seed=2)
    model.config.max_position_embeddings = 2048
    tok.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("chat-tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_gpu_preset_pipeline_runs_on_a_4bit_tiny_stand_in(chat_tiny, tmp_path, monkeypatch, capsys):
    """`prmlab pipeline --preset gpu` with only the model (a local tiny one), the device (cpu) and the budget
    changed: the chat track, a 4-bit bfloat16 base with adapters, hub-shaped MBPP rows -> Task (the hub replaced by
    in-memory rows), labels, PRM, both RL configurations, the PRM under drift, evaluation and the report."""
    import bitsandbytes as bnb
    import datasets

    from prmlab import cli
    from prmlab.cli import main
    from prmlab.tasks import hub

    calls = []

    def load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        return [dict(r) for r in MBPP_ROWS]

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(cli, "PIPELINE_DRIFT_TASKS", {"gpu": 1})  # the drift stage too, on one held-out task
    budget = ["model.device=cpu", "model.num_threads=1", "model.lora_r=4", "tasks.n_train=4", "tasks.n_eval=2",
              "sampling.n_samples=2", "sampling.max_new_tokens=24", "labels.k=2", "labels.max_new_tokens=24",
              "prm.epochs=1", "rl.iterations=4", "rl.checkpoint_every=2", "rl.prompts_per_iteration=2",
              "rl.samples_per_prompt=2", "rl.minibatch_size=2", "rl.max_new_tokens=24", "evaluation.n_samples=2",
              "evaluation.max_new_tokens=24", "evaluation.n_boot=50"]
    args = ["pipeline", "--preset", "gpu", "--run-dir", str(tmp_path), "--allow-execution",
            "--set", f"model.name_or_path={chat_tiny}"]
    for b in budget:
        args += ["--set", b]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[label]" in out and "[train-prm]" in out and "RL dense+value-init" in out and "[report]" in out
    assert {split for _, split in calls} == {"train", "test"}
    assert all(a == ("google-research-datasets/mbpp", "full") for a, _ in calls)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"]["load_in_4bit"] and cfg["model"]["track"] == "chat" and cfg["model"]["dtype"] == "bfloat16"
    labels = [json.loads(ln) for ln in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 8 and all(r["task_id"].startswith("mbpp/") for r in labels)
    for policy in ("base", "rl-sparse", "rl-dense+value-init"):
        assert json.loads((tmp_path / "eval" / f"{policy}.json").read_text())["n_tasks"] == 2
    assert sorted(p.name for p in (tmp_path / "rl" / "sparse" / "checkpoints").iterdir()) == \
        ["last", "rl-100", "rl-25", "rl-50", "rl-75"]
    drift = json.loads((tmp_path / "drift" / "result.json").read_text())
    assert drift["policy"] == "rl/sparse/rl-100" and not drift["proxy"] and drift["n_tasks"] == 1
    assert "[drift] PRM under drift on 1 held-out tasks, rl/sparse/rl-100 (RL checkpoint)" in out
    assert "## The PRM under policy drift: rl/sparse/rl-100, an RL checkpoint" in (tmp_path / "report.md").read_text()

    from prmlab.config import ModelConfig as MC
    base = load_base_model(MC(name_or_path=str(chat_tiny), load_in_4bit=True, dtype="bfloat16"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())


# --------------------------------------------------------------------------------------------- memory estimates
def test_4bit_bytes_per_weight_by_hand():
    from prmlab.memory import q4_bytes

    assert q4_bytes(False) == 0.5 + 4 / 64 == 0.5625  # 4-bit codes + one fp32 absmax per 64
    assert q4_bytes(True) == 0.5 + 1 / 64 + 4 / 16384 == 0.515869140625  # 8-bit absmax + fp32 per 256 blocks


def test_memory_estimate_by_hand():
    from prmlab.memory import ParamCounts, estimate, q4_bytes

    n = ParamCounts(quantizable=6400, other=1000, lora=50, hidden=9, layers=2, kv_heads=1, head_dim=4, vocab=7)
    cfg = C.preset("cpu-real").replace(rl={"prompts_per_iteration": 2, "samples_per_prompt": 3, "minibatch_size": 2,
                                           "max_new_tokens": 8})
    est = estimate(cfg, n)
    base = 6400 * q4_bytes(True) + 1000 * 4  # 4-bit linears; the rest fp32
    kv = 2 * 2 * 1 * 4 * (512 + 8) * 6 * 4  # 2 (k, v) * layers * kv heads * head dim * tokens * batch * fp32
    logits = 2 * 8 * 7 * 4
    assert est["prmlab"] == {"weights": base + (3 * 50 + 2 * 10) * 4, "training": (2 * 50 + 10) * 12,
                             "kv cache": kv, "logits": logits,
                             "total": base + 170 * 4 + 110 * 12 + kv + logits}
    assert est["separate-4bit"]["weights"] == 4 * base + 170 * 4
    assert est["trl"]["weights"] == base + 50 * 4 + 2 * (7400 + 10) * 4  # + value and reward models in fp32
    assert est["trl"]["training"] == 50 * 12 + (7400 + 10) * 3 * 4


def test_parameter_counts_from_configs_match_the_models():
    """Counts built on the meta device equal the toy-coder's real count and the model cards' numbers (Qwen2.5-Coder-
    1.5B: 1.54B, 1.31B without embeddings; Qwen2.5-7B: 7.61B, 6.53B; SmolLM2-135M: 134.5M)."""
    from transformers import AutoModelForCausalLM

    from prmlab.memory import load_model_config, param_counts
    from prmlab.models import data_dir

    def count(name):
        m = C.preset("tiny").model
        return param_counts(load_model_config(name), m.lora_r, m.lora_target_modules)

    toy = AutoModelForCausalLM.from_pretrained(data_dir() / "toy-coder")
    assert count("toy-coder").total == sum(p.numel() for p in toy.parameters())
    for name, total, body in (("Qwen/Qwen2.5-Coder-1.5B-Instruct", 1.54e9, 1.31e9),
                              ("Qwen/Qwen2.5-7B-Instruct", 7.61e9, 6.53e9)):
        n = count(name)
        assert abs(n.total - total) < 0.006e9 and abs(n.quantizable - body) < 0.006e9, name
    assert round(count("smollm2-135m-instruct").total / 1e6, 1) == 134.5


def test_docs_memory_table_is_current():
    from pathlib import Path

    from prmlab.memory import memory_markdown

    doc = (Path(__file__).resolve().parent.parent / "docs" / "real_models.md").read_text()
    start, end = "<!-- memory table: python -m prmlab.memory -->\n", "\n<!-- end memory table -->"
    assert start in doc and end in doc
    assert doc.split(start)[1].split(end)[0] == memory_markdown(), "regenerate: python -m prmlab.memory"
