"""Tiny, fast stand-ins for tests and examples: a byte-level BPE tokenizer and a random Llama built in code.

They have the same kind as the shipped toy-coder (byte-level BPE, LlamaForCausalLM), so code tested on them runs
unchanged on the real models.
"""

from __future__ import annotations

import torch

SNIPPETS: tuple[str, ...] = (
    "def f(a, b):\n    c = a + b\n    d = c * 2\n    return d - a\n",
    "def g(x):\n    # double it\n    y = x * 2\n    return y\n",
    "def h(n, m):\n    \"\"\"Let k be n minus m.\"\"\"\n    k = n - m\n    pass\n    return k // 3\n",
    "def add(a: int, b: int) -> int:\n\treturn a + b\r\n",
    "x = [1, 2, 3]\nprint(sum(x))\n\n\ns = 'héllo wörld ✓'\n",
)


def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (``tokenizers``) wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(SNIPPETS) * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A randomly initialised LlamaForCausalLM small enough for unit tests (about 0.1M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tiny_test_model(seed: int = 0):
    """``(model, tokenizer)``: a random 2-layer Llama and a tiny BPE tokenizer."""
    tok = tiny_tokenizer()
    return tiny_model(tok, seed=seed), tok


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer read straight from the GGUF file (skips the test if it is not installed)."""
    import pytest
    from transformers import AutoTokenizer

    from prmlab.models import ModelNotAvailable, smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
