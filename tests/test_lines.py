"""prmlab.lines: splitting, neutral lines, and line -> token position mapping on hand offsets and real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from prmlab.lines import (is_blank, is_comment, is_neutral, line_end_positions, line_spans, split_lines,
                          token_positions_for_lines)

REPO = Path(__file__).resolve().parents[1]
TOY_TOKENIZER = REPO / "data" / "toy-coder" / "tokenizer.json"

# ----------------------------------------------------------------------------------------------------------------
# split_lines / line_spans


@pytest.mark.parametrize("text, lines", [
    ("", []),
    ("\n", [""]),
    ("a", ["a"]),
    ("a\n", ["a"]),
    ("a\nb", ["a", "b"]),
    ("a\nb\n", ["a", "b"]),
    ("a\n\n", ["a", ""]),
    ("a\n\n\nb\n", ["a", "", "", "b"]),
    ("a\r\nb\r\n", ["a", "b"]),
    ("a\r\n\r\nb", ["a", "", "b"]),
    ("a\rb", ["a", "b"]),
    ("a\r\n\nb\r", ["a", "", "b"]),
    ("\tx = 1\n  \n", ["\tx = 1", "  "]),
    ("s = 'é✓🐍'\n", ["s = 'é✓🐍'"]),
    ("a\x0cb\u2028c\n", ["a\x0cb\u2028c"]),  # form feed / line separator are not Python line breaks
])
def test_split_lines(text, lines):
    assert split_lines(text) == lines
    spans = line_spans(text)
    assert [text[s:e] for s, e in spans] == lines
    assert all(s <= e for s, e in spans)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # a terminator between consecutive lines


def test_line_spans_values():
    assert line_spans("ab\r\n\ncd") == [(0, 2), (4, 4), (5, 7)]
    assert line_spans("x\n") == [(0, 1)]


def test_splitting_round_trips_with_newlines():
    text = "def f(x):\n    y = x\n\n    # c\n    return y\n"
    assert "".join(line + "\n" for line in split_lines(text)) == text


# ----------------------------------------------------------------------------------------------------------------
# neutral lines


@pytest.mark.parametrize("line, blank, comment", [
    ("", True, False),
    ("   ", True, False),
    ("\t \t", True, False),
    ("# note", False, True),
    ("    # note", False, True),
    ("\t#", False, True),
    ("x = 1  # trailing", False, False),
    ("    s = '#'", False, False),
    ('    """doc"""', False, False),
    ("pass", False, False),
])
def test_neutral(line, blank, comment):
    assert is_blank(line) is blank
    assert is_comment(line) is comment
    assert is_neutral(line) is (blank or comment)


# ----------------------------------------------------------------------------------------------------------------
# line_end_positions on hand-made offsets


def test_positions_simple_tokens():
    # text "ab\ncd\n": tokens "ab" "\n" "cd" "\n"
    offsets = [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert line_end_positions(offsets, line_spans("ab\ncd\n")) == [0, 2]


def test_line_ending_inside_multichar_token():
    # "f():\n    x\n" tokenised as "f" "():\n" "    x" "\n": line 1 ends at ':' inside "():\n"
    text = "f():\n    x\n"
    offsets = [(0, 1), (1, 5), (5, 10), (10, 11)]
    assert line_end_positions(offsets, line_spans(text)) == [1, 2]


def test_blank_lines_map_to_their_newline_token():
    # "a:\n\n\n    b\n" as "a" ":" "\n\n\n   " " b" "\n": both blank lines share the merged newline token
    text = "a:\n\n\n    b\n"
    offsets = [(0, 1), (1, 2), (2, 8), (8, 10), (10, 11)]
    assert line_end_positions(offsets, line_spans(text)) == [1, 2, 2, 3]


def test_blank_line_newline_in_next_token():
    # "a\n\nb": "a" "\n" "\nb"  -> the blank line's newline is the first char of "\nb", which also ends "b"
    assert line_end_positions([(0, 1), (1, 2), (2, 4)], line_spans("a\n\nb")) == [0, 2, 2]


def test_text_start_and_special_tokens():
    # whole text = "P:" + "x\ny" with a BOS (offsets (0, 0)) in front
    offsets = [(0, 0), (0, 2), (2, 3), (3, 4), (4, 5)]
    assert line_end_positions(offsets, line_spans("x\ny"), text_start=2) == [2, 4]


def test_token_straddling_prompt_and_completion():
    # prompt "P\n", completion "  x\n"; tokens "P" "\n  " "x" "\n"
    offsets = [(0, 1), (1, 4), (4, 5), (5, 6)]
    assert line_end_positions(offsets, line_spans("  x\n"), text_start=2) == [2]
    # a whitespace-only completion line ends inside the straddling token
    assert line_end_positions(offsets[:2], line_spans("  "), text_start=2) == [1]


def test_multibyte_character_split_over_tokens_takes_last():
    # "é" split by byte-level BPE into two tokens that both report (1, 2)
    offsets = [(0, 1), (1, 2), (1, 2), (2, 3)]
    assert line_end_positions(offsets, line_spans("aé\n")) == [2]


def test_trimmed_offsets_leading_space():
    # trim_offsets drops the leading space of " \n": the line "x " ends at the space (index 1), covered by nothing
    offsets = [(0, 1), (2, 3)]
    assert line_end_positions(offsets, line_spans("x \n")) == [1]


def test_positions_errors():
    with pytest.raises(ValueError, match="no token covers"):
        line_end_positions([(0, 1)], line_spans("ab\n"))
    with pytest.raises(ValueError):
        line_end_positions([(0, 1)], [(1, 0)])


def test_no_lines_no_positions():
    assert line_end_positions([(0, 1)], []) == []


# ----------------------------------------------------------------------------------------------------------------
# real tokenizers

PROMPT = 'def f(x):\n    """Return x plus one."""\n'
COMPLETIONS = {
    "lf": "    y = x + 1\n\n    # done\n    return y\n",
    "no_trailing_newline": "    y = x + 1\n    return y",
    "crlf": "    y = x + 1\r\n\r\n    return y\r\n",
    "empty_lines": "\n\n    y = x\n\n\n\n    return y\n\n",
    "unicode": '    s = "héllo ✓ 🐍"  # ünï\n    return s\n',
    "tabs": "\ty = x\t# tab\n\treturn y\t\n",
    "trailing_space": "    y = x   \n    return y \n",
    "lone_cr": "    y = x\r    return y\r",
    "colon_newline_indent": "    if x:\n        return 1\n    return 2\n",
    "empty": "",
    "single_blank": "\n",
}


def _tiny():
    from prmlab.testing import tiny_tokenizer

    return tiny_tokenizer()


def _trimmed():
    """A byte-level tokenizer whose post-processor trims leading spaces from offsets."""
    from tokenizers import processors

    tok = _tiny()
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def _smollm2():
    from prmlab.testing import smollm2_tokenizer

    return smollm2_tokenizer()


def _toy_coder():
    if not TOY_TOKENIZER.exists():
        pytest.skip("data/toy-coder/tokenizer.json not shipped yet")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOY_TOKENIZER.parent)


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2's tokenizer from its GGUF file (about 10 s to load, so once per module)."""
    return _smollm2()


SLOW_SMOLLM2 = [pytest.mark.slow, pytest.mark.smollm2]


@pytest.fixture(scope="module", params=["tiny", "trimmed", pytest.param("smollm2", marks=SLOW_SMOLLM2), "toy-coder"])
def tokenizer(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2")
    return {"tiny": _tiny, "trimmed": _trimmed, "toy-coder": _toy_coder}[request.param]()


def _check_mapping(tok, prompt: str, completion: str) -> list[int]:
    """The invariants of the mapping on a real tokenizer; returns the positions."""
    text = prompt + completion
    ids, positions = token_positions_for_lines(tok, prompt, completion)
    assert ids == tok(text, add_special_tokens=False).input_ids  # one tokenisation of the whole text
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    assert len(positions) == len(split_lines(completion))
    assert positions == sorted(positions)
    for (s, e), p in zip(line_spans(completion), positions):
        c = len(prompt) + (e - 1 if e > s else e)
        start, end = offsets[p]
        assert end > c, "the token must reach the line's last character"
        # it is the last token that has started at or before c (a later one would not hold c)
        assert p + 1 == len(offsets) or offsets[p + 1][0] > c or offsets[p + 1][1] <= c
        # decoding up to the position shows the whole line
        shown = tok.decode(ids[:p + 1], clean_up_tokenization_spaces=False)
        assert shown.startswith(text[:c + 1])
        assert not tok.decode(ids[:p], clean_up_tokenization_spaces=False).startswith(text[:c + 1])
    return positions


@pytest.mark.parametrize("name", sorted(COMPLETIONS))
def test_real_tokenizer_mapping(tokenizer, name):
    _check_mapping(tokenizer, PROMPT, COMPLETIONS[name])


def test_real_tokenizer_line_tokens(tokenizer):
    """The token at each line's position is the one that ends the line's visible code."""
    completion = COMPLETIONS["lf"]
    ids, positions = token_positions_for_lines(tokenizer, PROMPT, completion)
    toks = [tokenizer.decode([ids[p]], clean_up_tokenization_spaces=False) for p in positions]
    assert toks[0].rstrip(" ").endswith("1")  # "    y = x + 1"
    assert "\n" in toks[1]  # the blank line: its newline
    assert toks[2].endswith("done") or toks[2].endswith("e")  # "    # done"
    assert toks[3].strip().endswith("y")  # "    return y"


def test_bos_is_respected():
    """With add_special_tokens=True the ids start with BOS (if the tokenizer adds one) and positions shift."""
    from tokenizers import processors

    tok = _tiny()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    ids0, pos0 = token_positions_for_lines(tok, PROMPT, COMPLETIONS["lf"])
    ids1, pos1 = token_positions_for_lines(tok, PROMPT, COMPLETIONS["lf"], add_special_tokens=True)
    assert ids1 == [tok.bos_token_id] + ids0
    assert pos1 == [p + 1 for p in pos0]


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_known_tokens(smollm2):
    """SmolLM2 merges blank lines with the next indentation ("\\n\\n\\n   "), splits ✓ over byte-piece tokens and
    writes CRLF pairs as one token; the mapping picks the merged token and the last piece of ✓."""
    tok = smollm2
    completion = "    if x:\n\n\n        s = 1  # ✓\r\n\r\n"
    ids, pos = token_positions_for_lines(tok, PROMPT, completion)
    toks = tok.convert_ids_to_tokens(ids)
    assert [toks[p] for p in pos] == [":", "ĊĊĊĠĠĠĠĠĠĠ", "ĊĊĊĠĠĠĠĠĠĠ", "ĵ", "čĊčĊ"]
    offsets = tok(PROMPT + completion, return_offsets_mapping=True).offset_mapping
    check = len(PROMPT) + completion.index("✓")
    assert offsets[pos[3] - 1][0] <= check < offsets[pos[3] - 1][1]  # an earlier piece of ✓ is not taken
    assert offsets[pos[3]][0] <= check < offsets[pos[3]][1]
