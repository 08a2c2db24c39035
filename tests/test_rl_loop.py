"""The PPO loop and the RL stage on a tiny random Llama, with a stub executor instead of the sandbox."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from prmlab.config import Config, ModelConfig, RLConfig
from prmlab.errors import MissingArtifact
from prmlab.lines import token_positions_for_lines
from prmlab.records import ExecutionResult, Task
from prmlab.rl.loop import line_end_columns, line_monitors, ppo_iteration
from prmlab.rl.stage import build_state, kept_checkpoints, run_rl, variant_config
from prmlab.runs import derive_seed
from prmlab.sampling import Generation
from prmlab.testing import tiny_test_model

TASKS = [Task(f"t{i}", f"def f(a, b):\n    \"\"\"Task {i}.\"\"\"\n", "f", ("assert f(1, 2) == 3",) * 3,
              n_lines=2 + i) for i in range(5)]


def stub_execute(pairs):
    """Deterministic stand-in for the sandbox: a program's result is a hash of its text."""
    out = []
    for program, _ in pairs:
        h = derive_seed(program)
        out.append(ExecutionResult("passed", 3, 3) if h % 3 == 0 else ExecutionResult("failed", 3, h % 3))
    return out


def make_cfg(path, **rl) -> Config:
    model = ModelConfig(name_or_path=str(path), lora_r=4, lora_alpha=8)
    base = dict(iterations=2, prompts_per_iteration=2, samples_per_prompt=2, max_new_tokens=12, minibatch_size=2,
                checkpoint_every=1, keep_checkpoints=1, lr=1e-2, critic_lr=1e-2)
    return Config(name="tiny", model=model, rl=RLConfig(**{**base, **rl}))


def write_prm(cfg: Config, run_dir) -> None:
    """A 'trained' PRM in run_dir/prm: random LoRA B and head, so its scores are not zero."""
    from prmlab.models import load_base_model, load_tokenizer
    from prmlab.prm.model import new_prm, save_prm

    prm = new_prm(cfg.model, model=load_base_model(cfg.model), tokenizer=load_tokenizer(cfg.model))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in prm.trainable():
            p.add_(0.1 * torch.randn_like(p))
    save_prm(prm, run_dir / "prm", config={"model": dataclasses.asdict(cfg.model)})


def load(cfg):
    from prmlab.models import load_base_model, load_tokenizer

    return load_base_model(cfg.model), load_tokenizer(cfg.model)


def rows(out_dir):
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def same(a: dict, b: dict) -> bool:
    """Dicts equal value for value, nan equal to nan."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_variants_switches_and_kept_checkpoint_names():
    cfg = RLConfig(iterations=8, dense=True)
    assert not variant_config(cfg, "sparse").dense
    v = variant_config(cfg, "dense+value-init")
    assert v.dense and v.value_init and not v.partial_credit
    assert variant_config(cfg, "partial-credit").partial_credit
    assert kept_checkpoints(cfg) == {2: "rl-25", 4: "rl-50", 6: "rl-75", 8: "rl-100"}
    with pytest.raises(ValueError, match="unknown RL variant"):
        variant_config(cfg, "dense+sparse")


def test_line_end_columns_are_the_prms_positions_shifted_into_response_columns():
    _, tok = tiny_test_model()
    text = "def f(a, b):\n    c = a + b\n    # add\n    d = c * 2\n    return d - a\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    k = 5
    prompt = tok.decode(ids[:k])
    completion = text[len(prompt):]
    gen = Generation(tuple(ids[:k]), tuple(ids[k:]), completion, False)
    full, positions = token_positions_for_lines(tok, prompt, completion)
    assert full == ids
    assert line_end_columns(tok, gen, prompt, completion) == [p - k for p in positions]


def test_line_end_columns_on_the_chat_track_with_healing():
    """The chat prompt holds the template's special tokens (decoded away) and a healed first token: line ends must
    still land on the token holding each line's last character."""
    from prmlab.sampling import format_prompt
    from prmlab.testing import smollm2_tokenizer

    tok = smollm2_tokenizer()
    task = TASKS[0]
    prompt_text = format_prompt(task, tok, "chat")
    completion = "    d = a + b\n    # note\n    return d * 2\n"
    p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    healed_tok = tok.convert_ids_to_tokens(p_ids[-1:])
    healed = tok.decode(p_ids[-1:], skip_special_tokens=True)
    new_ids = tok(healed + completion + "```", add_special_tokens=False)["input_ids"]
    gen = Generation(tuple(p_ids[:-1]), tuple(new_ids), completion, True, healed)
    cols = line_end_columns(tok, gen, prompt_text, completion)
    pieces = [tok.decode(new_ids[: c + 1], skip_special_tokens=True) for c in cols]
    lines = completion.splitlines(keepends=True)
    for m, (col, piece) in enumerate(zip(cols, pieces)):
        upto = healed + "".join(lines[: m + 1]).rstrip("\n")
        assert piece.startswith(upto) and not tok.decode(new_ids[:col], skip_special_tokens=True).startswith(upto), (
            m, healed_tok, piece)


def test_line_monitors_count_comments_and_noops():
    m = line_monitors(["    x = x\n    # hi\n    return 1\n", "    pass\n"])
    assert m["lines_per_response"] == 2.0
    assert m["comment_line_ratio"] == pytest.approx(1 / 4)
    assert m["noop_line_ratio"] == pytest.approx(2 / 4)


def test_one_iteration_changes_only_policy_critic_and_value_head(saved_tiny, tmp_path):
    cfg = make_cfg(saved_tiny)
    write_prm(cfg, tmp_path)
    rl = variant_config(cfg.rl, "dense")
    model, tok = load(cfg)
    state = build_state(cfg, rl, tmp_path, model, tok)
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    heads = {"value": [p.detach().clone() for p in state.value_head.parameters()],
             "prm": [p.detach().clone() for p in state.prm_head.parameters()]}
    metrics = ppo_iteration(state, rl, TASKS, stub_execute)
    changed = {n for n, p in state.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed, "nothing trained"
    assert all("lora_" in n and (".policy." in n or ".critic." in n) for n in changed), changed
    assert any(".policy." in n for n in changed)
    assert all(torch.equal(a, b) for a, b in zip(heads["prm"], state.prm_head.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(heads["value"], state.value_head.parameters()))
    assert metrics["iteration"] == 1 and 0 <= metrics["pass_rate"] <= 1
    assert metrics["return_total"] == pytest.approx(
        metrics["return_outcome"] + metrics["return_prm"] + metrics["return_kl"], abs=1e-5)


def test_micro_batch_rows_by_hand():
    from types import SimpleNamespace

    from prmlab.rl.loop import micro_batch_rows

    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=2, hidden_size=10))  # 20 per token
    assert micro_batch_rows(model, 8, 50, budget=8000) == 8  # 8 x 50 x 20 = 8000: fits
    assert micro_batch_rows(model, 8, 50, budget=7999) == 7  # one row is 1000
    assert micro_batch_rows(model, 8, 50, budget=2500) == 2
    assert micro_batch_rows(model, 8, 50, budget=10) == 1  # never below one row


def test_a_minibatch_backpropagated_in_parts_updates_like_one_pass(saved_tiny, tmp_path, monkeypatch):
    """Memory: a minibatch above BACKWARD_BUDGET is backpropagated one row at a time; same losses and update."""
    from prmlab.rl import loop

    cfg = make_cfg(saved_tiny, minibatch_size=4)
    write_prm(cfg, tmp_path)
    rl = variant_config(cfg.rl, "dense+value-init")
    after = []
    for budget in (loop.BACKWARD_BUDGET, 1):  # the tiny sizes fit in one pass; a budget of 1 forces one row per pass
        monkeypatch.setattr(loop, "BACKWARD_BUDGET", budget)
        model, tok = load(cfg)
        state = build_state(cfg, rl, tmp_path, model, tok)
        # plain SGD: the update is the (clipped) gradient itself; Adam's first steps divide a near-zero gradient by its
        # own size, which turns summation-order rounding (1e-9) into differences of the order of the learning rate
        state.optimizer = torch.optim.SGD([{"params": g["params"], "lr": g["lr"]} for g in state.optimizer.param_groups])
        assert loop.micro_batch_rows(state.model, 4, 30) == (4 if budget > 1 else 1)
        metrics = ppo_iteration(state, rl, TASKS, stub_execute)
        params = {n: p.detach().clone() for n, p in state.model.named_parameters() if "lora_" in n}
        after.append((metrics, params, [p.detach().clone() for p in state.value_head.parameters()]))
    (m1, p1, h1), (m2, p2, h2) = after
    for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "pass_rate"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key
    assert all(torch.allclose(p1[n], p2[n], rtol=1e-4, atol=1e-7) for n in p1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(h1, h2))


def test_value_init_makes_the_critic_equal_the_prm_at_line_ends(saved_tiny, tmp_path):
    from prmlab.rl.loop import head_outputs

    cfg = make_cfg(saved_tiny)
    write_prm(cfg, tmp_path)
    model, tok = load(cfg)
    state = build_state(cfg, variant_config(cfg.rl, "value-init"), tmp_path, model, tok)
    from prmlab.prm.model import PRM

    prm = PRM(state.model, state.prm_head, tok)
    prompt, completion = "def f(a, b):\n", "    c = a + b\n    # add\n    return c\n"
    scores = prm.score([(prompt, completion)])[0].scores
    ids, positions = token_positions_for_lines(tok, prompt, completion)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        v = head_outputs(state.model, state.value_head, "critic", ids_t, torch.ones_like(ids_t))[0]  # (T,)
    assert any(abs(s) > 1e-4 for s in scores)
    assert v[positions].tolist() == pytest.approx(list(scores), abs=1e-6)


def test_dense_with_zero_lambdas_reproduces_sparse_first_iteration(saved_tiny, tmp_path):
    cfg = make_cfg(saved_tiny, lambda_pass=0.0, lambda_fail=0.0)
    write_prm(cfg, tmp_path)
    a = run_rl(cfg, tmp_path, "sparse", execute=stub_execute, tasks=TASKS, stop_after=1, progress=False)
    b = run_rl(cfg, tmp_path, "dense", execute=stub_execute, tasks=TASKS, stop_after=1, progress=False)
    assert same(a.last, b.last)
    from safetensors.torch import load_file

    pa = load_file(tmp_path / "rl/sparse/checkpoints/last/policy/adapter_model.safetensors")
    pb = load_file(tmp_path / "rl/dense/checkpoints/last/policy/adapter_model.safetensors")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_stop_and_continue_equals_an_uninterrupted_run(saved_tiny, tmp_path):
    cfg = make_cfg(saved_tiny, iterations=3, checkpoint_every=2)
    kw = dict(execute=stub_execute, tasks=TASKS, progress=False)
    whole = run_rl(cfg, tmp_path / "a", "partial-credit", **kw)
    assert whole.iterations == 3 and whole.checkpoints == ("rl-100",)
    run_rl(cfg, tmp_path / "b", "partial-credit", stop_after=1, **kw)  # logged 1, no checkpoint: like a kill
    run_rl(cfg, tmp_path / "b", "partial-credit", stop_after=2, **kw)  # restarts from 0, checkpoint at 2
    resumed = run_rl(cfg, tmp_path / "b", "partial-credit", **kw)
    ra, rb = rows(tmp_path / "a/rl/partial-credit"), rows(tmp_path / "b/rl/partial-credit")
    assert [r["iteration"] for r in rb] == [1, 2, 3]
    assert all(same(x, y) for x, y in zip(ra, rb))
    assert resumed.iterations == 3
    again = run_rl(cfg, tmp_path / "b", "partial-credit", **kw)  # finished: nothing more
    assert len(rows(tmp_path / "b/rl/partial-credit")) == 3 and again.iterations == 3


@pytest.mark.slow
def test_the_loop_runs_on_a_4bit_base(saved_tiny, tmp_path):
    cfg = make_cfg(saved_tiny)
    cfg = cfg.replace(model={"load_in_4bit": True})
    result = run_rl(cfg, tmp_path, "sparse", execute=stub_execute, tasks=TASKS, stop_after=1, progress=False)
    assert result.iterations == 1 and "RL sparse" in str(result)


def test_dense_without_a_prm_names_the_command_that_trains_it(saved_tiny, tmp_path):
    cfg = make_cfg(saved_tiny)
    for variant in ("dense", "value-init"):
        with pytest.raises(MissingArtifact, match="prmlab train-prm"):
            run_rl(cfg, tmp_path, variant, execute=stub_execute, tasks=TASKS, progress=False)
    assert not (tmp_path / "rl").exists()
