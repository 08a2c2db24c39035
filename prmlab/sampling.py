"""Batched generation: n responses per task, and K completions of a code prefix (the best-of-K oracle's samples).

Two prompt *tracks* (``ModelConfig.track``):

* ``completion`` (toy-coder, base code models): the model continues ``task.prompt`` (signature + docstring) with the
  function body; the program ends at EOS or at the first line back at column 0.
* ``chat`` (instruct models): the task goes into the tokenizer's chat template with a short instruction, and the
  assistant turn is pre-filled with ``"```python\\n" + task.prompt``, so the model continues the function body exactly
  as on the completion track and the program ends at the closing fence. Pre-filling keeps the steps the same on
  both tracks (the lines of the body; ``program = task.prompt + completion``) and stops the model from rewriting the
  signature or the docstring. SmolLM2-135M-Instruct writes no code for a bare prompt but answers a chat request
  with a code block (measured in docs/implementation_details.md).

Every row has its own seed and its own random generator (:class:`RowSampler`), so a row's sample depends on its
seed, its prompt and the model only, never on the batch it shares or the batch size: a response sampled alone
equals the same response sampled among others, a resumed run samples what an uninterrupted run would, and the
labelling oracle stepped by hand draws the completions the batched driver draws. Sampling is explicit: temperature
and top-p (``top_k = 0``, ``repetition_penalty = 1``) override whatever the model's ``generation_config`` prefers;
a temperature of 0 means greedy decoding. Prompts are tokenised without special tokens (no BOS), the same way
:func:`prmlab.lines.token_positions_for_lines` tokenises ``prompt + completion``.

Token healing (``SamplingConfig.token_healing``, on by default): every prompt here ends with a line break, and
byte-level BPE tokenizers such as SmolLM2's merge a line break with the next line's indentation (``"\\n    "`` is
one token). A prompt ending in a lone ``"\\n"`` token is therefore a boundary the model almost never saw; SmolLM2
answers it by closing the code block at once (all 8 of 8 HumanEval prompts, greedy, chat track). So the last
prompt token is taken back and the first generated token must re-create its text (:func:`heal_prompt`); with it,
SmolLM2 writes indented function bodies. Tokenizers that isolate newlines (the toy-coder) are unaffected: the only
token extending ``"\\n"`` is ``"\\n"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prmlab.config import SamplingConfig
from prmlab.lines import is_blank, line_spans
from prmlab.records import Response, Task
from prmlab.runs import derive_seed

TRACKS: tuple[str, ...] = ("completion", "chat")
FENCE = "```"
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the whole completed function in one "
                    "```python code block.\n\n```python\n{prompt}```")
"""The user turn on the chat track; ``{prompt}`` is ``task.prompt``."""


def _check_track(track: str) -> None:
    if track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, got {track!r}")


def format_prompt(task: Task, tokenizer, track: str) -> str:
    """The text the model continues: ``task.prompt`` (completion track) or the chat template + pre-filled code.

    Chat track: ``template([user: CHAT_INSTRUCTION], add_generation_prompt) + "```python\\n" + task.prompt``.
    """
    _check_track(track)
    if track == "completion":
        return task.prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the chat track needs a tokenizer with a chat template; use track='completion'")
    messages = [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=task.prompt)}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return head + FENCE + "python\n" + task.prompt


def _strip_trailing_blank_lines(text: str) -> str:
    """``text`` up to and including the terminator of its last non-blank line."""
    spans = [(s, e) for s, e in line_spans(text) if not is_blank(text[s:e])]
    if not spans:
        return ""
    end = spans[-1][1]
    return text[:end + (2 if text.startswith("\r\n", end) else 1 if text[end:end + 1] in ("\n", "\r") else 0)]


def extract_completion(text: str, track: str, stop_at_dedent: bool | None = None) -> str:
    """The program part of a generated continuation of the prompt; its lines are the steps that get labelled.

    ``completion`` track: cut at the first non-blank line that starts at column 0 (the function has ended: a
    repeated ``def``, a test call, prose). ``chat`` track: cut at the first closing ``````` fence. EOS and
    everything after it are already gone (the generation stops there). Trailing blank lines are dropped, so the
    result ends with the terminator of its last code line (or with no terminator if the text had none).
    ``stop_at_dedent`` applies the column-0 rule on the chat track too (default: only on the completion track).
    A line inside a multi-line string that starts at column 0 ends the program too (rare in function bodies).
    """
    _check_track(track)
    if track == "chat":
        cut = text.find(FENCE)
        text = text if cut < 0 else text[:cut]
    if stop_at_dedent if stop_at_dedent is not None else track == "completion":
        for s, e in line_spans(text):
            if not is_blank(text[s:e]) and not text[s].isspace():
                text = text[:s]
                break
    return _strip_trailing_blank_lines(text)


@dataclass(frozen=True)
class Generation:
    """One generated continuation of a prompt.

    ``prompt_ids + new_ids`` is exactly the token sequence the model saw and produced (no padding: what a policy's
    log-probabilities must be computed on), and ``decode(prompt_ids + new_ids) == prompt + text`` (stop token
    skipped). With token healing ``prompt_ids`` lack the prompt's last token and the first new token re-creates
    its text ``healed`` (and possibly more; see :func:`heal_prompt`).
    """

    prompt_ids: tuple[int, ...]
    new_ids: tuple[int, ...]
    """Generated ids up to and including the first stop token (EOS), if any."""
    text: str
    """The continuation of the *prompt text* (the healed characters removed, special tokens skipped)."""
    finished: bool
    """Whether generation stopped at a stop token (False: cut by ``max_new_tokens``)."""
    healed: str = ""
    """The prompt's last characters that the model re-generated (token healing); empty when not healed."""


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Ids that end a response: the tokenizer's EOS, the model's configured EOS ids and ``<|im_end|>`` if known."""
    ids = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    ids.append(im_end)
    return sorted({int(i) for i in ids if i is not None})


def token_extensions(tokenizer, token_id: int, pieces: Sequence[str | None]) -> tuple[str, list[int]]:
    """``(text of token_id, ids of the tokens that extend it)``: a token extends t when its raw piece starts with
    t's piece (``pieces`` are the vocabulary's raw token strings) and its text starts with t's text. t itself is
    always in the list."""
    tail = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
    head = pieces[token_id]
    candidates = [i for i, piece in enumerate(pieces) if piece is not None and head and piece.startswith(head)]
    texts = tokenizer.batch_decode([[i] for i in candidates], clean_up_tokenization_spaces=False)
    return tail, sorted({i for i, t in zip(candidates, texts) if t.startswith(tail)} | {token_id})


def heal_prompt(tokenizer, prompt: str, ids: list[int], pieces: Sequence[str | None],
                memo: dict | None = None) -> tuple[list[int], str, list[int]]:
    """Token healing: ``(ids without the last token, its text, the ids allowed as the first new token)``.

    A prompt that ends at a token boundary the model rarely saw is backed up by one token, and the first
    generated token must *extend* the removed text (:func:`token_extensions`). SmolLM2 writes ``"\\n    "`` as one
    token, so after a prompt ending in a lone ``"\\n"`` token it closes the code block at once; healed, it
    writes the indented body. The removed token itself is always allowed, so healing only widens what may follow.
    No healing (``(ids, "", [])``) for a one-token prompt, a special last token, or a last token that nothing else
    extends (then healing would change nothing but the random stream). ``memo`` caches extensions per last token
    id within a call.
    """
    if len(ids) < 2 or ids[-1] in set(tokenizer.all_special_ids):
        return ids, "", []
    memo = {} if memo is None else memo
    if ids[-1] not in memo:
        memo[ids[-1]] = token_extensions(tokenizer, ids[-1], pieces)
    tail, allowed = memo[ids[-1]]
    if not tail or not prompt.endswith(tail) or len(allowed) == 1:
        return ids, "", []
    return ids[:-1], tail, allowed


class FirstTokenMask:
    """Logits processor: at the first generated position, row b may only pick ``allowed[b]`` (all if empty).

        score'_{b,v} = score_{b,v} if v in allowed_b else -inf      (only while input length == prompt length)

    Applied before temperature and top-p, so sampling renormalises over the allowed tokens.
    """

    def __init__(self, allowed: Sequence[Sequence[int]], prompt_len: int):
        self.allowed = [list(a) for a in allowed]
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # (B, T), (B, V)
        if input_ids.shape[1] != self.prompt_len:
            return scores
        keep = torch.ones_like(scores, dtype=torch.bool)  # (B, V)
        for b, allowed in enumerate(self.allowed):
            if allowed:
                keep[b] = False
                keep[b, torch.tensor(allowed, device=scores.device)] = True
        return scores.masked_fill(~keep, float("-inf"))


class RowSampler:
    """Logits processor that samples row b from its own generator (the Gumbel-max trick), for seeded rows.

        y_b = argmax_v ( s_{b,v} + g_{b,v} ),   g_{b,v} = -log(-log u_{b,v}),  u_{b,v} ~ U(0, 1) from generator b

    is a sample of softmax(s_b) (Gumbel 1954). It runs last, after temperature and top-p (``s`` is -inf outside the
    nucleus), and ``generate`` then decodes greedily, so the draw of row b uses generator b alone.
    """

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # (B, T), (B, V)
        u = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators])  # (B, V) u ~ U(0, 1)
        g = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))  # (B, V) Gumbel(0, 1) noise
        return scores + g.to(device=scores.device, dtype=scores.dtype)  # argmax = a sample of softmax(s)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` with every row right-aligned (left padding).  # (B, T), (B, T)"""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    for b, r in enumerate(rows):
        if r:
            ids[b, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, T - len(r):] = 1
    return ids.to(device), mask.to(device)


def _decode_new(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text the new ids add to the prompt: decode(prompt + new) minus decode(prompt), which keeps leading
    spaces that SentencePiece-style decoders drop at the start of a sequence; plain decode as a fallback."""
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    head = tokenizer.decode(prompt_ids, **kw)
    full = tokenizer.decode(prompt_ids + new_ids, **kw)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new_ids, **kw)


def _processors(rows: list[tuple[list[int], str, list[int]]], seeds: Sequence[int], prompt_len: int,
                temperature: float, top_p: float):
    """Healing mask, then (unless greedy) temperature, top-p and the per-row sampler."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    procs = [FirstTokenMask([r[2] for r in rows], prompt_len)]
    if temperature > 0:
        procs.append(TemperatureLogitsWarper(float(temperature)))  # s / temperature
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(float(top_p)))  # -inf outside the top-p nucleus
        procs.append(RowSampler(seeds))
    return LogitsProcessorList(procs)


def _encode(tokenizer, prompts: Sequence[str], token_healing: bool) -> list[tuple[list[int], str, list[int]]]:
    """Per prompt ``(ids fed to the model, healed text, allowed first tokens)``; no BOS (see the module doc)."""
    ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if not token_healing:
        return [(i, "", []) for i in ids]
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    memo: dict = {}
    return [heal_prompt(tokenizer, p, i, pieces, memo) for p, i in zip(prompts, ids)]


def _finish(tokenizer, row: tuple[list[int], str, list[int]], new: list[int], stop: list[int],
            max_new_tokens: int) -> Generation:
    """Cut a generated row at its first stop token or its budget (one more token when healed) and decode it
    relative to the prompt text."""
    ids, healed, _ = row
    new = new[:max_new_tokens + bool(healed)]
    end = next((t for t, tok in enumerate(new) if tok in stop), None)
    new = new if end is None else new[:end + 1]
    text = _decode_new(tokenizer, ids, new if end is None else new[:-1])
    text = text[len(healed):] if text.startswith(healed) else text
    return Generation(tuple(ids), tuple(new), text, end is not None, healed)


def generate(model, tokenizer, prompts: Sequence[str], *, temperature: float, top_p: float, max_new_tokens: int,
             seeds: Sequence[int], batch_size: int = 32, token_healing: bool = True, progress: bool = False,
             desc: str = "generating") -> list[Generation]:
    """One continuation per prompt (repeat a prompt for several), in the order given; row i drawn from ``seeds[i]``.

    Rows are generated in batches of similar length (stable sort by prompt length), left-padded; each row samples
    from its own generator (:class:`RowSampler`), so its result does not depend on its batch. With
    ``token_healing`` the last prompt token is re-generated (:func:`heal_prompt`), and a batch with a healed row gets
    one more token so that ``max_new_tokens`` still bounds the new text. The model is put in eval mode under
    ``torch.no_grad()`` and its training flag restored afterwards; inputs go to ``model.device``.
    """
    from tqdm.auto import tqdm

    if len(seeds) != len(prompts):
        raise ValueError(f"one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    if not prompts:
        return []
    stop = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    rows = _encode(tokenizer, prompts, token_healing)
    order = sorted(range(len(prompts)), key=lambda i: len(rows[i][0]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[Generation | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress):
            ids, mask = _left_pad([rows[i][0] for i in batch], pad_id, model.device)  # (B, T)
            procs = _processors([rows[i] for i in batch], [seeds[i] for i in batch], ids.shape[1], temperature, top_p)
            extra = int(any(rows[i][1] for i in batch))  # a healed token re-creates prompt text: not in the budget
            with torch.no_grad():
                seqs = model.generate(input_ids=ids, attention_mask=mask, logits_processor=procs, do_sample=False,
                                      num_beams=1, max_new_tokens=max_new_tokens + extra, eos_token_id=stop,
                                      pad_token_id=pad_id, repetition_penalty=1.0)  # (B, T')
            for b, i in enumerate(batch):
                out[i] = _finish(tokenizer, rows[i], seqs[b, ids.shape[1]:].tolist(), stop, max_new_tokens)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def sample_responses(model, tokenizer, tasks: Sequence[Task], cfg: SamplingConfig, track: str, policy: str = "base",
                     progress: bool = True) -> list[Response]:
    """``cfg.n_samples`` responses per task, task by task, with ids ``f"{task_id}/{policy}/{cfg.seed}/{i}"``.

    ``completion = extract_completion(generated, track)``, ``program = task.prompt + completion``;
    ``Response.prompt`` is ``task.prompt`` (the chat wrapping is :func:`format_prompt`'s, recomputable).
    ``meta``: the track, the number of generated tokens (a healed one included), whether generation ended at EOS
    and the healed prompt text (:class:`Generation`).
    """
    _check_track(track)
    rows = [(task, i) for task in tasks for i in range(cfg.n_samples)]
    prompts = [format_prompt(task, tokenizer, track) for task, _ in rows]
    seeds = [derive_seed(cfg.seed, task.task_id, i) for task, i in rows]  # response i of a task: its own stream
    gens = generate(model, tokenizer, prompts, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens, seeds=seeds, batch_size=cfg.batch_size,
                    token_healing=cfg.token_healing, progress=progress, desc=f"sampling {policy}")
    responses = []
    for (task, i), g in zip(rows, gens):
        completion = extract_completion(g.text, track)
        responses.append(Response(
            task_id=task.task_id, response_id=f"{task.task_id}/{policy}/{cfg.seed}/{i}", prompt=task.prompt,
            completion=completion, program=task.prompt + completion, policy=policy, seed=cfg.seed,
            meta={"track": track, "new_tokens": len(g.new_ids), "finished": g.finished, "healed": g.healed}))
    return responses


def complete_prefixes(model, tokenizer, requests: Sequence[tuple[Task, str]], k: int, temperature: float,
                      top_p: float, max_new_tokens: int, seeds: Sequence[int], track: str, batch_size: int = 32,
                      progress: bool = False, token_healing: bool = True) -> list[list[str]]:
    """For each ``(task, prefix)``, k sampled *whole* completions: ``extract_completion(prefix + continuation)``.

    ``prefix`` is the first m lines of a response, each with its line break; the model continues
    ``format_prompt(task) + prefix``, so ``task.prompt + result`` is a runnable program that starts with the
    prefix (except that trailing blank lines of the prefix are dropped when nothing follows them). All requests'
    k rows are generated together in batches of ``batch_size``; completion i of request j is drawn from
    ``derive_seed(seeds[j], i)`` alone, so the same request and seed give the same completions in any batch.
    """
    _check_track(track)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if len(seeds) != len(requests):
        raise ValueError(f"one seed per request: got {len(seeds)} seeds for {len(requests)} requests")
    prompts = [format_prompt(task, tokenizer, track) + prefix for task, prefix in requests for _ in range(k)]
    row_seeds = [derive_seed(s, i) for s in seeds for i in range(k)]
    gens = generate(model, tokenizer, prompts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    seeds=row_seeds, batch_size=batch_size, token_healing=token_healing, progress=progress,
                    desc="completing prefixes")
    out: list[list[str]] = []
    for r, (_, prefix) in enumerate(requests):
        out.append([extract_completion(prefix + g.text, track) for g in gens[r * k:(r + 1) * k]])
    return out
