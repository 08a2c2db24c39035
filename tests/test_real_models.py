"""The real-model path on a CPU: 4-bit gradients, the GPU presets' code path on a tiny stand-in, memory estimates."""

from __future__ import annotations

import warnings

import torch

from prmlab.config import ModelConfig
from prmlab.models import add_adapters, load_base_model, token_logprobs


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
