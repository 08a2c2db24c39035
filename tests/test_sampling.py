"""prmlab.sampling on a random 2-layer Llama with a tiny byte-level BPE tokenizer (and SmolLM2's chat template)."""

from __future__ import annotations


import pytest
import torch

from prmlab.config import SamplingConfig
from prmlab.records import Task
from prmlab.runs import derive_seed
from prmlab.sampling import (FirstTokenMask, RowSampler, complete_prefixes, extract_completion, format_prompt,
                             generate, heal_prompt, sample_responses, stop_token_ids, token_extensions)

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


def test_derive_seed_in_sampling_order():
    assert derive_seed(0, "a", "b") == derive_seed(0, "a", "b")
    assert len({derive_seed(0, "a", "b"), derive_seed(1, "a", "b"), derive_seed(0, "b", "a"),
                derive_seed(0, "ab"), derive_seed("0", "a", "b")}) == 5
    assert 0 <= derive_seed(123, "x") < 2 ** 31


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
        assert 0 < r.meta["new_tokens"] <= 12 + bool(r.meta["healed"])
        assert r.meta["track"] == "completion" and r.meta["healed"] == "\n" and r.seed == 0
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


def _raw(model, tok, prompts, seed=0, **kw):
    args = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10, "batch_size": 8} | kw
    return generate(model, tok, prompts, seeds=[derive_seed(seed, i) for i in range(len(prompts))], **args)


def test_a_row_samples_the_same_alone_or_in_any_batch(tiny):
    """Per-row generators: a row's sample depends on its seed and prompt only, not on its batch or batch size."""
    model, tok = tiny
    prompts = [PROMPT_F, PROMPT_G, PROMPT_F, PROMPT_G, PROMPT_F]
    seeds = [11, 12, 13, 14, 15]
    together = generate(model, tok, prompts, temperature=1.0, top_p=0.9, max_new_tokens=10, seeds=seeds, batch_size=5)
    small = generate(model, tok, prompts, temperature=1.0, top_p=0.9, max_new_tokens=10, seeds=seeds, batch_size=2)
    alone = [generate(model, tok, [p], temperature=1.0, top_p=0.9, max_new_tokens=10, seeds=[s])[0]
             for p, s in zip(prompts, seeds)]
    assert [g.new_ids for g in together] == [g.new_ids for g in small] == [g.new_ids for g in alone]
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(model, tok, prompts, temperature=1.0, top_p=1.0, max_new_tokens=4, seeds=seeds[:2])


def test_row_sampler_draws_from_the_softmax():
    """Gumbel-max with a fixed generator: empirical frequencies match softmax(scores) (4000 draws, 3 tokens)."""
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))  # (1, V) log p
    counts = torch.zeros(3)
    for s in range(4000):
        counts[int(RowSampler([s])(torch.zeros(1, 1, dtype=torch.long), scores).argmax())] += 1
    assert torch.allclose(counts / 4000, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    assert torch.equal(RowSampler([7])(None, scores), RowSampler([7])(None, scores))


def test_generate_records_ids_and_stop(tiny):
    model, tok = tiny
    prompts = [PROMPT_F, PROMPT_G] * 3
    stop = stop_token_ids(tok, model)
    assert stop == [tok.eos_token_id]
    for healing in (True, False):
        for g, p in zip(_raw(model, tok, prompts, token_healing=healing), prompts):
            full = tok(p, add_special_tokens=False).input_ids
            assert list(g.prompt_ids) == (full[:-1] if healing else full)
            assert g.healed == (tok.decode(full[-1:]) if healing else "") and p.endswith(g.healed)
            assert g.finished == (g.new_ids[-1] in stop)
            assert g.finished or len(g.new_ids) == 10 + bool(g.healed)  # the healed token is not in the budget
            body = list(g.new_ids[:-1] if g.finished else g.new_ids)
            seen = tok.decode(list(g.prompt_ids) + body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            assert seen == p + g.text


def test_token_extensions_and_healing(tiny):
    _, tok = tiny
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    nl = tok.convert_tokens_to_ids("Ċ")
    tail, allowed = token_extensions(tok, nl, pieces)
    texts = {tok.decode([i]) for i in allowed}
    assert tail == "\n" and nl in allowed and "\n" in texts
    assert any(t.startswith("\n ") for t in texts)  # "\n   " merges exist in this BPE, and are allowed
    assert all(t.startswith("\n") for t in texts)
    assert set(allowed) == {i for i in range(len(tok)) if tok.decode([i]).startswith("\n")}
    ids = tok(PROMPT_F, add_special_tokens=False).input_ids
    assert heal_prompt(tok, PROMPT_F, ids, pieces) == (ids[:-1], "\n", allowed)
    assert heal_prompt(tok, "x", tok("x").input_ids, pieces)[1] == ""  # one token: nothing to heal
    eos_ended = ids + [tok.eos_token_id]
    assert heal_prompt(tok, PROMPT_F + "</s>", eos_ended, pieces) == (eos_ended, "", [])


def test_no_healing_where_nothing_extends_the_last_token():
    """The toy-coder's tokenizer isolates newlines: no token extends "\\n", so prompts are left as they are."""
    from pathlib import Path

    from transformers import AutoTokenizer

    path = Path(__file__).resolve().parents[1] / "data" / "toy-coder"
    if not (path / "tokenizer.json").exists():
        pytest.skip("toy-coder tokenizer not shipped")
    tok = AutoTokenizer.from_pretrained(path)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    ids = tok(PROMPT_F, add_special_tokens=False).input_ids
    assert token_extensions(tok, ids[-1], pieces) == ("\n", [ids[-1]])
    assert heal_prompt(tok, PROMPT_F, ids, pieces) == (ids, "", [])


def test_first_token_mask():
    mask = FirstTokenMask([[1, 2], []], prompt_len=3)
    scores = torch.zeros(2, 4)
    out = mask(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out[0].tolist() == [float("-inf"), 0.0, 0.0, float("-inf")] and out[1].tolist() == [0.0] * 4
    assert mask(torch.zeros(2, 4, dtype=torch.long), scores).tolist() == [[0.0] * 4] * 2  # later steps: untouched


def test_healed_first_token_extends_the_prompt(tiny):
    """Sampled at a high temperature, every row's first token still re-creates the removed newline."""
    model, tok = tiny
    gens = _raw(model, tok, [PROMPT_F] * 8, temperature=3.0, max_new_tokens=2)
    assert all(g.healed == "\n" and tok.decode([g.new_ids[0]]).startswith("\n") for g in gens)
    assert len({g.new_ids[0] for g in gens}) > 1  # and it is sampled among the extensions


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
    shown = tok.decode(list(free[0].new_ids[:2]), clean_up_tokenization_spaces=False)
    assert g.healed + g.text == shown
    cut = next((i for i, t in enumerate(free[1].new_ids) if t == stop_tok), None)
    assert other.new_ids == (free[1].new_ids if cut is None else free[1].new_ids[:cut + 1])


def test_greedy_at_temperature_zero(tiny):
    model, tok = tiny
    g1 = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0, seed=0)
    g2 = _raw(model, tok, [PROMPT_F, PROMPT_G], temperature=0.0, seed=99)
    assert [g.new_ids for g in g1] == [g.new_ids for g in g2]  # the seed does not matter
    plain = _raw(model, tok, [PROMPT_F], temperature=0.0, token_healing=False)[0]
    with torch.no_grad():  # the first greedy token is the argmax of the next-token logits
        ids = torch.tensor([tok(PROMPT_F, add_special_tokens=False).input_ids])
        assert plain.new_ids[0] == int(model(ids).logits[0, -1].argmax())


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
    args = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10, "seeds": [3, 4, 5], "track": "completion",
            "batch_size": 4}
    out = complete_prefixes(model, tok, reqs, 5, **args)
    assert [len(c) for c in out] == [5, 5, 5]
    for (t, p), comps in zip(reqs, out):
        for c in comps:
            assert c.startswith(p) and c == extract_completion(c, "completion")
    assert out == complete_prefixes(model, tok, reqs, 5, **args)
    assert out != complete_prefixes(model, tok, reqs, 5, **(args | {"seeds": [6, 4, 5]}))
    assert complete_prefixes(model, tok, reqs[1:2], 5, **(args | {"seeds": [4]})) == out[1:2]  # alone = in a batch
    assert complete_prefixes(model, tok, reqs, 0, **args) == [[], [], []]
    assert complete_prefixes(model, tok, [], 5, **(args | {"seeds": []})) == []


def test_sample_responses_follow_token_healing_flag(tiny):
    model, tok = tiny
    for healing in (True, False):
        rs = sample_responses(model, tok, TASKS[:2], cfg(token_healing=healing), "completion", progress=False)
        prompts = [t.prompt for t in TASKS[:2] for _ in range(3)]
        seeds = [derive_seed(0, t.task_id, i) for t in TASKS[:2] for i in range(3)]
        gens = generate(model, tok, prompts, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_size=4,
                        token_healing=healing, seeds=seeds)
        assert [r.completion for r in rs] == [extract_completion(g.text, "completion") for g in gens]


def test_complete_prefixes_continue_the_prefix(tiny):
    """The continuation is generated after prompt + prefix: greedy results equal generating from that text."""
    model, tok = tiny
    prefix = "    d = c * 2\n"
    out = complete_prefixes(model, tok, [(TASKS[0], prefix)], 2, temperature=0.0, top_p=1.0, max_new_tokens=8,
                            seeds=[0], track="completion")
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
    from prmlab.testing import smollm2_tokenizer

    return smollm2_tokenizer()


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
