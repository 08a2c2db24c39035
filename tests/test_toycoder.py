"""The toy-coder: tokenizer, batching, schedule, a tiny reproducible training run, evaluation helpers, shipped model."""

import json
import math
from pathlib import Path

import pytest

from prmlab.config import ModelConfig, SamplingConfig, SandboxConfig
from prmlab.records import Task
from prmlab.tasks.toy import generate_tasks
from prmlab.tasks.toy_corpus import ToyCorpusConfig, corpus_samples
from prmlab.toycoder.train import (
    ToyCoderConfig, collate, encode_samples, lr_at, make_batches, train_tokenizer, train_toy_coder,
)
from prmlab.toycoder.evaluate import (
    execute, line_analysis, render_card, sample_completions, summarize,
)

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "toy-coder"
TINY = ToyCoderConfig(corpus=ToyCorpusConfig(n_samples=40), vocab_size=300, hidden_size=32, layers=1, heads=2,
                      intermediate_size=64, batch_size=8, warmup_steps=1, log_every=1, lr=3e-3, threads=1)


@pytest.fixture(scope="module")
def samples():
    return corpus_samples(ToyCorpusConfig(n_samples=60))


@pytest.fixture(scope="module")
def tok(samples):
    return train_tokenizer([s["task"].prompt + s["completion"] for s in samples], 400)


def test_tokenizer_round_trip_and_prompt_boundary(samples, tok):
    assert tok.bos_token and tok.eos_token and tok.pad_token and tok.padding_side == "left"
    for s in samples[:20]:
        text = s["task"].prompt + s["completion"]
        ids = tok(text).input_ids
        assert tok.decode(ids) == text
        assert ids == tok(s["task"].prompt).input_ids + tok(s["completion"]).input_ids  # same boundary as sampling


def test_tokenizer_numbers_and_offsets(tok):
    text = "def f(a):\n    d = a * 123456\n    return d // 2\n"
    enc = tok(text, return_offsets_mapping=True)
    assert tok.decode(enc.input_ids) == text
    assert [text[s:e] for s, e in enc.offset_mapping if "1" <= text[s:e].strip()[:1] <= "9"][:6] == list("123456")
    newline_ends = [e for s, e in enc.offset_mapping if text[s:e] == "\n"]
    assert newline_ends == [i + 1 for i, ch in enumerate(text) if ch == "\n"]


def test_collate_masks_prompt_and_padding():
    encoded = [([5, 6, 7, 8], 2), ([9, 10, 11], 1)]
    ids, mask, labels = collate(encoded, [0, 1], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [-100, 10, 11, -100]]


def test_encode_drops_too_long(samples, tok):
    enc = encode_samples(samples, tok, max_positions=10_000)
    assert len(enc) == len(samples) and all(ids[-1] == tok.eos_token_id for ids, _ in enc)
    short = encode_samples(samples, tok, max_positions=60)
    assert len(short) < len(samples) and all(len(ids) <= 60 for ids, _ in short)


def test_make_batches_deterministic_partition():
    lengths = [i % 17 for i in range(1000)]
    a, b = make_batches(lengths, 32, seed=1), make_batches(lengths, 32, seed=1)
    assert a == b and a != make_batches(lengths, 32, seed=2)
    assert sorted(i for batch in a for i in batch) == list(range(1000))


def test_lr_schedule_hand_computed():
    cfg = ToyCoderConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_toy_coder(TINY, tmp_path_factory.mktemp("tc"), progress=False)


def test_tiny_training_lowers_loss_and_saves(tiny_run):
    losses = [v for _, v in tiny_run.losses]
    assert len(losses) == 5 and losses[-1] < losses[0]
    out = tiny_run.out_dir
    for name in ("model.safetensors", "tokenizer.json", "config.json", "loss_curve.png", "train_config.json",
                 "train_metrics.json", "provenance.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "train_config.json").read_text())["corpus"]["n_samples"] == 40


def test_tiny_training_is_reproducible(tiny_run, tmp_path):
    again = train_toy_coder(TINY, tmp_path, progress=False)
    assert again.losses == tiny_run.losses
    assert (tmp_path / "model.safetensors").read_bytes() == (tiny_run.out_dir / "model.safetensors").read_bytes()


def test_saved_model_loads_and_samples(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_run.out_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_run.out_dir).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and tok.padding_side == "left"
    tasks = generate_tasks(3, "eval")
    cfg = SamplingConfig(max_new_tokens=8, batch_size=2, seed=3)
    a, b = sample_completions(model, tok, tasks, cfg, False), sample_completions(model, tok, tasks, cfg, False)
    assert len(a) == 3 and a == b


def test_line_analysis_hand_cases():
    ref = "    d = a + b\n    e = d // 2\n    return e - a\n"
    assert line_analysis(ref, ref) == {"first_mistake": None, "slip": False, "fix": False, "comment": False,
                                       "noop": False}
    wrong = line_analysis("    d = a - b\n    e = d // 2\n    return e - a\n", ref)
    assert wrong["first_mistake"] == 1 and wrong["slip"] and not wrong["fix"]
    fixed = line_analysis("    # go\n    d = a + b\n    e = d / 2\n    e = d // 2\n    pass\n    return e - a\n", ref)
    assert fixed["first_mistake"] == 2 and fixed["fix"] and fixed["comment"] and fixed["noop"]
    early = line_analysis("    d = a + b\n    return d\n", ref)
    assert early["first_mistake"] == 2 and not early["slip"]
    assert line_analysis("    d = a + b\n    d = d\n", ref)["first_mistake"] == 2  # stopped early; x = x is a no-op


def test_summarize_hand_cases():
    tasks = [Task(task_id=f"t{i}", prompt="", entry_point="f", tests=("pass",), reference="    d = a\n    return d\n",
                  n_lines=L) for i, L in enumerate([2, 2, 8, 8])]
    comps = ["    d = a\n    return d\n", "    d = b\n    return d\n", "    d = a\n    return a\n", "    pass\n"]
    r = summarize(tasks, comps, [True, False, False, False])
    assert r["pass_at_1_by_length"] == {"2": 0.5, "8": 0.0} and r["pass_at_1_by_bucket"]["2-3"] == 0.5
    assert r["failures"]["n"] == 3 and r["failures"]["wrong_like"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["failures"]["revised_like"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["samples_with_noop"] == 0.25
    card = render_card(TINY.to_dict(), {"n_parameters": 1e6, "n_samples": 1, "corpus_tokens": 1, "solution_tokens": 1,
                                        "data_seed": 0, "seed": 0, "steps": 1, "first_loss": 2.0, "final_loss": 1.0,
                                        "train_s": 60, "tokens_per_s": 1},
                       {**r, "examples": [], "executor": "x", "n_per_length": 2, "seed": 0, "temperature": 1.0,
                        "top_p": 1.0})
    assert "| 2 | 2 | 50.0% |" in card


def test_evaluation_executes_in_the_sandbox():
    """The toy-coder's evaluation has no executor of its own: prmlab's sandbox judges it."""
    t = generate_tasks(1, "eval")[0]
    programs = [t.prompt + t.reference, t.prompt + "    return 0.5\n", t.prompt + "    import sys; sys.exit(0)\n"]
    assert execute(programs, [t] * 3, SandboxConfig(allow_execution=True)) == [True, False, False]


def test_execution_is_opt_in():
    from prmlab.sandbox import ExecutionNotAllowed

    t = generate_tasks(1, "eval")[0]
    with pytest.raises(ExecutionNotAllowed):
        execute([t.prompt + t.reference], [t], SandboxConfig())


@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="toy-coder not shipped yet")
def test_shipped_model_loads_and_round_trips():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prmlab.models import load_base_model, load_tokenizer

    tok = AutoTokenizer.from_pretrained(SHIPPED)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7
    t = generate_tasks(1, "eval")[0]
    program = t.prompt + t.reference
    enc = tok(program, return_offsets_mapping=True)
    assert tok.decode(enc.input_ids) == program and tok.eos_token_id is not None and tok.pad_token_id is not None
    cfg = ModelConfig(name_or_path="toy-coder")
    assert load_tokenizer(cfg).padding_side == "left" and load_base_model(cfg).config.vocab_size == len(tok)


def test_second_stage_continues_from_a_trained_model(tiny_run, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, corpus=ToyCorpusConfig(n_samples=16, seed=1), init_from=str(tiny_run.out_dir))
    second = train_toy_coder(cfg, tmp_path, progress=False)
    assert second.losses[:5] == tiny_run.losses and len(second.losses) == 7
    assert second.losses[5][1] < tiny_run.losses[0][1]  # starts from the trained weights, not from scratch
    assert second.metrics["earlier_stage"]["n_samples"] == 40
    assert (tmp_path / "tokenizer.json").read_text() == (tiny_run.out_dir / "tokenizer.json").read_text()
    assert second.metrics["stage_starts"] == [tiny_run.metrics["steps"] + 1]  # marked in loss_curve.png
    # where the tokenizer was loaded from is not saved (it would make two identical saves differ)
    assert "is_local" not in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_acceptance_criteria():
    from prmlab.toycoder.evaluate import acceptance

    good = {"pass_at_1_by_bucket": {"2-3": 0.6, "4-7": 0.35, "8-12": 0.15},
            "pass_at_1_by_length": {"2": 0.7, "3": 0.5, "4": 0.52, "8": 0.2, "12": 0.1},
            "failures": {"wrong_like": 0.3, "revised_like": 0.7, "first_mistake_is_slip": 0.5},
            "samples_with_fix": 0.1, "samples_with_comment": 0.03, "samples_with_noop": 0.02}
    assert all(acceptance(good).values())
    bad = {**good, "pass_at_1_by_length": {"2": 0.7, "3": 0.4, "4": 0.5}, "samples_with_noop": 0.0}
    res = acceptance(bad)
    assert not res["falling steadily with length"] and not res["comment and no-op lines in a small fraction (0-10%)"]
    assert res["pass@1 >= 50% on 2-3 lines"]


def test_second_stage_records_the_continued_architecture(tiny_run, tmp_path):
    """A second stage keeps the first's architecture, and its train_config.json says so (not the defaults)."""
    cfg = ToyCoderConfig(corpus=ToyCorpusConfig(n_samples=8, seed=2), init_from=str(tiny_run.out_dir), threads=1,
                         batch_size=8, warmup_steps=1, log_every=1)
    train_toy_coder(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert (saved["hidden_size"], saved["layers"], saved["heads"], saved["intermediate_size"]) == (32, 1, 2, 64)


def test_train_command_repeats_a_non_default_architecture():
    import sys

    sys.path.insert(0, str(SHIPPED.parent.parent / "scripts"))
    try:
        from train_toy_coder import parse_args, train_command
    finally:
        sys.path.pop(0)
    argv = ["--n-samples", "900", "--hidden-size", "384", "--layers", "6", "--heads", "6", "--intermediate-size",
            "1024"]
    args = parse_args(argv)
    t = ToyCoderConfig(corpus=ToyCorpusConfig(n_samples=900), hidden_size=args.hidden_size, layers=args.layers,
                       heads=args.heads, intermediate_size=args.intermediate_size).to_dict()
    cmd = train_command(Path("/tmp/x"), t)
    assert cmd.endswith("--hidden-size 384 --layers 6 --heads 6 --intermediate-size 1024")
    again = parse_args(cmd.split()[2:])  # the recorded command parses back to the same architecture
    assert (again.hidden_size, again.layers, again.heads, again.intermediate_size) == (384, 6, 6, 1024)
    default = train_command(Path("/tmp/x"), ToyCoderConfig().to_dict())
    assert "--hidden-size" not in default and "--layers" not in default
