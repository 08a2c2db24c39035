"""Pass@1 of the toy-coder by program length, failure analysis and example samples (issue 4's acceptance check).

For each eval task one completion is sampled at the preset's temperature and executed in the sandbox. Reported:

* pass@1 per reference length L and per bucket (2-3, 4-7, 8-12 lines): mean of 1[passed];
* among failures, the first line (comments and no-ops skipped) that differs from the reference:
  line 1 -> *Wrong-like* (wrong from the start), later -> *Revised-like* (a correct prefix, then a mistake);
  whether that first mistake is a *slip* (assigns the same variable the reference does, so a later line could still
  re-assign it correctly, i.e. recoverable); passes that contain such a re-assignment (a mistake fixed later);
* the share of samples with a comment line or a no-op line (``pass``, ``x = x``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from prmlab.config import ModelConfig, SamplingConfig, SandboxConfig
from prmlab.lines import is_comment
from prmlab.models import load_base_model, load_tokenizer
from prmlab.records import Task
from prmlab.sampling import sample_responses
from prmlab.sandbox import Sandbox
from prmlab.tasks.toy import generate_tasks

BUCKETS: dict[str, tuple[int, int]] = {"2-3": (2, 3), "4-7": (4, 7), "8-12": (8, 12)}
NOOP = re.compile(r"^(pass|(\w+) = \2)$")


def sample_completions(model, tok, tasks: list[Task], cfg: SamplingConfig, progress: bool = True) -> list[str]:
    """One completion per task from the pipeline's own sampler (:func:`prmlab.sampling.sample_responses`: per-row
    seeds, token healing, the completion track's stop rules)."""
    responses = sample_responses(model, tok, tasks, dataclasses.replace(cfg, n_samples=1), "completion",
                                 progress=progress)
    return [r.completion for r in responses]


def execute(programs: list[str], tasks: list[Task], cfg: SandboxConfig) -> list[bool]:
    """Pass/fail of each program in prmlab's sandbox (the only executor of model output)."""
    with Sandbox(cfg) as sb:
        return [r.passed for r in sb.run_many(list(zip(programs, tasks)))]


def code_lines(text: str) -> list[str]:
    """Stripped non-blank lines of a body."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def is_noop(line: str) -> bool:
    return bool(NOOP.match(line.strip()))


def _target(line: str) -> str | None:
    if line.startswith("return"):
        return "return"
    m = re.match(r"^(\w+)\s*=[^=]", line)
    return m.group(1) if m else None


def line_analysis(completion: str, reference: str) -> dict[str, Any]:
    """Where a completion first departs from the reference and whether it contains a comment, no-op or fix.

    ``first_mistake``: 1-based index among effective lines (comments and no-ops skipped) of the first line that
    differs from the reference, or None; ``slip``: that line assigns the reference's variable at that step;
    ``fix``: some effective line re-assigns the variable the line before it assigned.
    """
    lines = code_lines(completion)
    eff = [ln for ln in lines if not is_comment(ln) and not is_noop(ln)]
    ref = code_lines(reference)
    first = next((i + 1 for i, ln in enumerate(eff) if i >= len(ref) or ln != ref[i]), None)
    if first is None and len(eff) < len(ref):
        first = len(eff) + 1  # stopped early
    targets = [_target(ln) for ln in eff]
    return {
        "first_mistake": first,
        "slip": first is not None and first <= min(len(eff), len(ref)) and targets[first - 1] == _target(ref[first - 1]),
        "fix": any(t is not None and t != "return" and t == targets[i] for i, t in enumerate(targets[1:])),
        "comment": any(is_comment(ln) for ln in lines),
        "noop": any(is_noop(ln) for ln in lines),
    }


def _rate(xs: list[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def summarize(tasks: list[Task], completions: list[str], passed: list[bool]) -> dict[str, Any]:
    """Pass@1 by length and bucket, failure analysis, comment/no-op shares (pure)."""
    by_len: dict[int, list[bool]] = defaultdict(list)
    rows = []
    for t, c, ok in zip(tasks, completions, passed):
        by_len[t.n_lines].append(ok)
        rows.append({**line_analysis(c, t.reference), "passed": ok, "n_lines": t.n_lines})
    fails = [r for r in rows if not r["passed"]]
    passes = [r for r in rows if r["passed"]]
    return {
        "n_samples": len(rows),
        "pass_at_1": _rate(passed),
        "pass_at_1_by_length": {str(L): _rate(v) for L, v in sorted(by_len.items())},
        "n_by_length": {str(L): len(v) for L, v in sorted(by_len.items())},
        "pass_at_1_by_bucket": {k: _rate([ok for L, v in by_len.items() if lo <= L <= hi for ok in v])
                                for k, (lo, hi) in BUCKETS.items()},
        "failures": {
            "n": len(fails),
            "wrong_like": _rate([r["first_mistake"] == 1 for r in fails]),
            "revised_like": _rate([r["first_mistake"] is not None and r["first_mistake"] > 1 for r in fails]),
            "no_visible_mistake": _rate([r["first_mistake"] is None for r in fails]),
            "first_mistake_is_slip": _rate([r["slip"] for r in fails]),
            "contain_fix": _rate([r["fix"] for r in fails]),
        },
        "passes_with_fix": _rate([r["fix"] for r in passes]),
        "samples_with_fix": _rate([r["fix"] for r in rows]),
        "samples_with_comment": _rate([r["comment"] for r in rows]),
        "samples_with_noop": _rate([r["noop"] for r in rows]),
    }


def examples(tasks: list[Task], completions: list[str], passed: list[bool], k: int = 6) -> list[dict[str, Any]]:
    """A few samples for the card: passing and failing ones of several lengths."""
    picked, want = [], [(True, 2), (False, 3), (True, 5), (False, 6), (True, 8), (False, 10)][:k]
    for ok, L in want:
        for t, c, p in zip(tasks, completions, passed):
            if p == ok and t.n_lines == L:
                picked.append({"task_id": t.task_id, "passed": p, "program": t.prompt + c})
                break
    return picked


def evaluate_toy_coder(model_dir: str | Path, n_per_length: int = 200, seed: int = 0, min_lines: int = 2,
                       max_lines: int = 12, sampling: SamplingConfig | None = None,
                       sandbox: SandboxConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Sample one completion per eval task (``n_per_length`` per length) and measure pass@1 and its anatomy."""
    sampling = sampling or SamplingConfig(temperature=1.0, batch_size=64, seed=seed)
    sandbox = sandbox or SandboxConfig(allow_execution=True)
    n_len = max_lines - min_lines + 1
    tasks = generate_tasks(n_per_length * n_len, "eval", seed=seed, min_lines=min_lines, max_lines=max_lines)
    tasks = sorted(tasks, key=lambda t: t.n_lines)  # similar lengths batch together
    model_cfg = ModelConfig(name_or_path=str(model_dir))
    tok, model = load_tokenizer(model_cfg), load_base_model(model_cfg)
    completions = sample_completions(model, tok, tasks, sampling, progress)
    passed = execute([t.prompt + c for t, c in zip(tasks, completions)], tasks, sandbox)
    result = summarize(tasks, completions, passed)
    result.update(executor="prmlab.sandbox", seed=seed, n_per_length=n_per_length, temperature=sampling.temperature,
                  top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                  examples=examples(tasks, completions, passed))
    return result


def save_eval(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def acceptance(result: dict[str, Any], tolerance: float = 0.05) -> dict[str, bool]:
    """Issue 4's acceptance criteria on an evaluation result (``tolerance``: allowed rise between lengths)."""
    b, f, by = result["pass_at_1_by_bucket"], result["failures"], list(result["pass_at_1_by_length"].values())
    return {
        "pass@1 >= 50% on 2-3 lines": b["2-3"] >= 0.5,
        "pass@1 <= 20% on 8+ lines": b["8-12"] <= 0.2,
        "falling steadily with length": b["2-3"] > b["4-7"] > b["8-12"]
        and all(q <= p + tolerance for p, q in zip(by, by[1:])),
        "Wrong-like and Revised-like failures both common (>= 15%)": f["wrong_like"] >= 0.15
        and f["revised_like"] >= 0.15,
        "some failures recoverable by a later line": f["first_mistake_is_slip"] > 0.1
        and result["samples_with_fix"] > 0,
        "comment and no-op lines in a small fraction (0-10%)": 0 < result["samples_with_comment"] <= 0.1
        and 0 < result["samples_with_noop"] <= 0.1,
    }


def _table(result: dict[str, Any]) -> str:
    rows = ["| lines | tasks | pass@1 |", "|---|---|---|"]
    rows += [f"| {L} | {result['n_by_length'][L]} | {p:.1%} |" for L, p in result["pass_at_1_by_length"].items()]
    rows += [f"| **{k}** | | **{p:.1%}** |" for k, p in result["pass_at_1_by_bucket"].items()]
    return "\n".join(rows)



def _regenerate(train_cfg: dict[str, Any], m: dict[str, Any], command: str, stage1_dir: str) -> str:
    cmd = command or ".venv/bin/python scripts/train_toy_coder.py"
    e = m.get("earlier_stage")
    if not e:
        return f"- regenerate: `{cmd}`"
    return (f"- trained in two stages (the second continues the first's weights and tokenizer on a fresh corpus);\n"
            f"  stage 1: {e['n_samples']} samples, data seed {e['data_seed']}, {e['steps']} steps, loss "
            f"{e['first_loss']:.3f} -> {e['final_loss']:.3f}, {e['train_s'] / 60:.1f} min; stage 2 from step "
            f"{e['steps']}: {m['n_samples']} samples, data seed {m['data_seed']} (the dashed line in `loss_curve.png`; "
            f"the bump after it is the second stage's learning-rate warm-up on new samples).\n"
            f"- regenerate: `.venv/bin/python scripts/train_toy_coder.py --out {stage1_dir} --n-samples "
            f"{e['n_samples']} --data-seed {e['data_seed']} --seed {e['seed']} --no-eval` then\n  `{cmd}`.")


def render_card(train_cfg: dict[str, Any], train_metrics: dict[str, Any], result: dict[str, Any],
                repeat: dict[str, Any] | None = None, command: str = "", stage1_dir: str = "<stage-1 dir>") -> str:
    """The model card (data/toy-coder/README.md): training, size, measured pass rates, failure anatomy, samples."""
    f = result["failures"]
    m = train_metrics
    same = "not re-run" if repeat is None else (
        "identical" if repeat["pass_at_1_by_length"] == result["pass_at_1_by_length"] else "DIFFERENT")
    ex = "\n\n".join(f"{'passed' if e['passed'] else 'failed'} ({e['task_id']}):\n```python\n{e['program']}```"
                     for e in result["examples"])
    return f"""# toy-coder

A {m['n_parameters'] / 1e6:.2f}M-parameter Llama-style causal LM ({train_cfg['layers']} layers, width
{train_cfg['hidden_size']}, {train_cfg['heads']} heads, SwiGLU {train_cfg['intermediate_size']}, tied embeddings,
context {train_cfg['max_positions']}) with a byte-level BPE tokenizer, trained from scratch on CPU by
`scripts/train_toy_coder.py` on the toy world's noisy training corpus (`prmlab/tasks/toy_corpus.py`). It is the
`tiny` preset's base model: it continues a toy task's prompt with a 4-space-indented body and EOS.

    AutoTokenizer.from_pretrained("data/toy-coder"); AutoModelForCausalLM.from_pretrained("data/toy-coder")

## Training
- corpus: {m['n_samples']} samples of `pretrain`-split tasks (never an eval or train task), {m['corpus_tokens']}
  tokens ({m['solution_tokens']} solution tokens, the only ones in the loss); data seed {m['data_seed']}, seed
  {m['seed']}; noise model in `train_config.json` (`corpus`).
- AdamW lr {train_cfg['lr']} (warm-up {train_cfg['warmup_steps']}, cosine to {train_cfg['min_lr_ratio']}x), batch
  {train_cfg['batch_size']}, {train_cfg['epochs']} epoch(s), {m['steps']} steps in all, bf16 autocast={train_cfg['bf16']},
  {train_cfg['threads']} threads; loss {m['first_loss']:.3f} -> {m['final_loss']:.3f} (`loss_curve.png`);
  {m.get('total_train_s', m['train_s']) / 60:.1f} min of training in all at {m['tokens_per_s']:.0f} tokens/s on a shared 2-core CPU.
- files: `model.safetensors` (fp32), tokenizer files, `train_config.json`, `train_metrics.json`, `eval.json`,
  `provenance.json`.
{_regenerate(train_cfg, m, command, stage1_dir)}

## Measured pass@1 (eval split, one sample per task, temperature {result['temperature']}, top-p {result['top_p']})
Executed with `{result['executor']}`; {result['n_per_length']} tasks per length, eval seed {result['seed']}.
{'A second evaluation with the same seed was not run (--repeat-eval).' if repeat is None else f'A second evaluation with the same seed gave {same} numbers.'}

{_table(result)}

Overall pass@1 {result['pass_at_1']:.1%} over {result['n_samples']} samples.

## Acceptance (issue 4)
{chr(10).join(f"- [{'x' if ok else ' '}] {k}" for k, ok in acceptance(result).items())}
- [{'x' if same == 'identical' else ' '}] same seed, same metrics (evaluation re-run: {same}); re-running the
  *training* with the same seeds gives bitwise-identical weights in `tests/test_toycoder.py` (tiny config, same
  machine); the full run itself has not been repeated.

## Anatomy of the samples
- failures: {f['n']}; first mistake on line 1 (*Wrong*-like) {f['wrong_like']:.1%}, after a correct prefix
  (*Revised*-like) {f['revised_like']:.1%}, no visible mistake {f['no_visible_mistake']:.1%};
  first mistake is a slip that a later line could still fix: {f['first_mistake_is_slip']:.1%}.
- passes that contain a mistake fixed by a later line: {result['passes_with_fix']:.1%} of passes.
- samples with a comment line: {result['samples_with_comment']:.1%}; with a no-op line (`pass`, `x = x`):
  {result['samples_with_noop']:.1%}.

## Example samples
{ex}
"""
