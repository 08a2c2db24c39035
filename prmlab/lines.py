"""Code <-> lines <-> token positions, and which lines are neutral (comments and blank lines).

A response's *lines* are its steps: binary search labels them, the PRM scores them, dense rewards are paid on them.
A reward for line i is read at one token: the token that holds line i's last character, found from the tokenizer's
character offsets over the *whole* text (prompt + completion), never by tokenising lines one by one (that would
give different tokens at the line breaks than the model sees).

Pure Python: nothing here needs torch; :func:`token_positions_for_lines` only calls the tokenizer.

Conventions (shared with :mod:`prmlab.labels.driver` and :mod:`prmlab.sampling`):

* Line terminators are ``\\r\\n``, ``\\n`` and a lone ``\\r`` (Python's universal newlines). Other characters that
  ``str.splitlines`` treats as breaks (form feed, ``\\x1c``, ``\\u2028``, ...) are *not* line breaks in Python
  source and stay inside their line.
* A terminator ends a line; it does not start one. So a trailing newline adds no empty step, ``""`` has no lines,
  ``"\\n"`` is one blank line and ``"a\\n\\n"`` is ``["a", ""]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LINE_BREAK = re.compile(r"\r\n|\n|\r")
"""The line terminators of Python source (universal newlines)."""


def line_spans(text: str) -> list[tuple[int, int]]:
    """Character ``[start, end)`` of each line's content in ``text`` (terminators excluded).

    Line j runs from the end of the (j-1)-th terminator to the start of the j-th; the text after the last
    terminator is a last line only when it is non-empty. ``text[s:e]`` is exactly ``split_lines(text)[j]``.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in LINE_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def split_lines(text: str) -> list[str]:
    """The lines of a response, without their terminators; ``""`` gives ``[]`` (no steps).

    >>> split_lines("a\\r\\n\\nb")
    ['a', '', 'b']
    """
    return [text[s:e] for s, e in line_spans(text)]


def is_blank(line: str) -> bool:
    """Only whitespace (or nothing) on the line."""
    return line.strip() == ""


def is_comment(line: str) -> bool:
    """A comment line: its first non-whitespace character is ``#``.

    Judged on the line alone: a line inside a multi-line string that starts with ``#`` counts as a comment, and
    a docstring line does not. A line with code before a ``#`` is code.
    """
    return line.lstrip().startswith("#")


def is_neutral(line: str) -> bool:
    """Comment or blank: such lines change nothing the program does and get label 0 (no comment-spam reward)."""
    return is_blank(line) or is_comment(line)


def _token_at(offsets: Sequence[tuple[int, int]], c: int, first: int) -> int:
    """Index of the last token whose character range covers character c, searching from token ``first``.

    A token covers c when ``start <= c < end``; we take the first token with ``end > c``, then move on while the
    next token also covers c. This is robust to what real tokenizers report: special tokens (BOS, ``(0, 0)``)
    end before every character; with ``trim_offsets`` a token's leading spaces leave its range and a
    whitespace-only token collapses to ``(end, end)``, so the first token ending after c is still the one that
    holds c; byte-level BPE splits a multi-byte character over several tokens that all cover it, and the *last*
    of them is taken, the first token at which the whole character is known.
    """
    i = first
    while i < len(offsets) and offsets[i][1] <= c:
        i += 1
    if i == len(offsets):
        raise ValueError(f"no token covers character {c}: the offsets end at {offsets[-1][1] if offsets else 0}")
    while i + 1 < len(offsets) and offsets[i + 1][0] <= c < offsets[i + 1][1]:
        i += 1
    return i


def line_end_positions(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
                       text_start: int = 0) -> list[int]:
    """For each line, the index of the token holding the line's last character.

    ``offsets`` are the ``(start, end)`` character offsets of the tokens of the *whole* tokenized text (e.g.
    prompt + completion), ``spans`` the lines' ``[s, e)`` in the completion (:func:`line_spans`), and
    ``text_start`` where the completion starts in the whole text. The character of line j is

        c_j = text_start + e_j - 1     if the line has content (e_j > s_j)
        c_j = text_start + e_j         for an empty line: the first character of its own terminator

    and ``pos_j`` = the last token with ``start <= c_j < end``. So a line that ends inside a multi-character
    token (``"):\\n"``, ``"\\n\\n    "``) maps to that token, which may also hold the next line's indentation;
    positions never decrease, and two lines share a position when one token spans both their ends (e.g. a blank
    line whose newline merged with the previous line's ``":\\n"``). The reward at ``pos_j`` is computed from the
    tokens up to and including line j's last character, and possibly a few characters after it.
    """
    positions: list[int] = []
    i = 0
    for s, e in spans:
        if not 0 <= s <= e:
            raise ValueError(f"bad line span ({s}, {e})")
        c = text_start + (e - 1 if e > s else e)  # c_j
        i = _token_at(offsets, c, i)
        positions.append(i)  # pos_j
    return positions


def token_positions_for_lines(tokenizer, prompt: str, completion: str,
                              add_special_tokens: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, positions)``: ``prompt + completion`` tokenised once, and each completion line's end token.

    ``input_ids`` are exactly ``tokenizer(prompt + completion, add_special_tokens=...).input_ids``; positions
    index into them (:func:`line_end_positions`). ``add_special_tokens`` defaults to False because
    :mod:`prmlab.sampling` builds prompts that way: the toy-coder was trained without BOS and chat prompts carry
    their special tokens in the template text. Needs a fast tokenizer (offset mapping).
    """
    text = prompt + completion
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    positions = line_end_positions(offsets, line_spans(completion), text_start=len(prompt))
    return list(enc["input_ids"]), positions
