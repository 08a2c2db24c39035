"""Train the toy-coder and ship it to data/toy-coder (weights, tokenizer, loss curve, metrics, eval, card).

    .venv/bin/python scripts/train_toy_coder.py                      # train + evaluate + card with the defaults
    # (the defaults are a smaller 4-layer recipe; the shipped model's exact command, about 55 min on 2 cores, is the
    # "regenerate" line of data/toy-coder/README.md)
    .venv/bin/python scripts/train_toy_coder.py --eval-only          # re-evaluate the shipped model, rewrite card
    .venv/bin/python scripts/train_toy_coder.py --n-samples 2000 --out /tmp/tc --n-per-length 20   # quick trial

Same seeds on the same machine (and thread count) reproduce the same weights and the same metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prmlab.config import preset  # noqa: E402
from prmlab.tasks.toy_corpus import ToyCorpusConfig  # noqa: E402
from prmlab.toycoder.train import ToyCoderConfig, train_toy_coder  # noqa: E402
from prmlab.toycoder.evaluate import evaluate_toy_coder, render_card, save_eval  # noqa: E402

ARCHITECTURE = ("hidden_size", "layers", "heads", "intermediate_size")
"""ToyCoderConfig fields that the command line sets for a model trained from scratch."""
STAGE1_DIR = "/tmp/toy-coder-stage1"
"""Where the card's regenerating commands put the first stage of a two-stage training (the second's --init-from)."""


def parse_args(argv=None) -> argparse.Namespace:
    d, c = ToyCoderConfig(), ToyCorpusConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/toy-coder", help="output directory")
    p.add_argument("--n-samples", type=int, default=c.n_samples, help="corpus size (samples)")
    p.add_argument("--data-seed", type=int, default=c.seed, help="seed of the corpus")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and batch order")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="model width (from scratch only)")
    p.add_argument("--layers", type=int, default=d.layers, help="decoder layers (from scratch only)")
    p.add_argument("--heads", type=int, default=d.heads, help="attention heads (from scratch only)")
    p.add_argument("--intermediate-size", type=int, default=d.intermediate_size, help="SwiGLU width (from scratch only)")
    p.add_argument("--init-from", default="", help="continue from this trained toy-coder (second stage)")
    p.add_argument("--eval-only", action="store_true", help="skip training; evaluate the model in --out")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--n-per-length", type=int, default=200, help="eval tasks per program length (2..12)")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from the saved eval.json")
    p.add_argument("--repeat-eval", action="store_true", help="evaluate twice to check reproducibility")
    return p.parse_args(argv)


def train_command(out: Path, t: dict, init_from: str | None = None) -> str:
    """The command that trains the model in ``out`` again, from its ``train_config.json``.

    For a second stage, ``init_from`` replaces the recorded first-stage directory (which may be ``out`` itself once
    shipped)."""
    cmd = (f".venv/bin/python scripts/train_toy_coder.py --out {shlex.quote(str(out))} --n-samples "
           f"{t['corpus']['n_samples']} --data-seed {t['corpus']['seed']} --seed {t['seed']} --epochs {t['epochs']} "
           f"--lr {t['lr']} --warmup-steps {t['warmup_steps']} --threads {t['threads']}")
    d = ToyCoderConfig()
    for key in ARCHITECTURE:
        if not t.get("init_from") and t.get(key, getattr(d, key)) != getattr(d, key):
            cmd += f" --{key.replace('_', '-')} {t[key]}"
    src = (init_from or t["init_from"]) if t.get("init_from") else ""
    return cmd + (f" --init-from {shlex.quote(src)}" if src else "")


def write_card(out: Path, ev: dict) -> None:
    """Write ``out/README.md`` from the saved training files and an evaluation result."""
    train_cfg = json.loads((out / "train_config.json").read_text())
    train_metrics = json.loads((out / "train_metrics.json").read_text())
    repeat = None
    if "repeat_identical" in ev:
        repeat = {"pass_at_1_by_length": ev["pass_at_1_by_length"] if ev["repeat_identical"] else {}}
    command = train_command(out, train_cfg, STAGE1_DIR)
    (out / "README.md").write_text(render_card(train_cfg, train_metrics, ev, repeat, command, STAGE1_DIR))


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.eval_only:
        cfg = ToyCoderConfig(corpus=ToyCorpusConfig(n_samples=args.n_samples, seed=args.data_seed), seed=args.seed,
                             epochs=args.epochs, lr=args.lr, threads=args.threads, warmup_steps=args.warmup_steps,
                             init_from=args.init_from, hidden_size=args.hidden_size, layers=args.layers,
                             heads=args.heads, intermediate_size=args.intermediate_size)
        result = train_toy_coder(cfg, out)
        print(json.dumps({k: v for k, v in result.metrics.items() if k != "losses"}, indent=2))
    if args.no_eval:
        return
    if args.card_only:
        write_card(out, json.loads((out / "eval.json").read_text()))
        return
    import torch

    torch.set_num_threads(args.threads)
    tiny = preset("tiny")
    sampling = dataclasses.replace(tiny.sampling, seed=args.eval_seed)
    sandbox = dataclasses.replace(tiny.sandbox, allow_execution=True)
    ev = evaluate_toy_coder(out, n_per_length=args.n_per_length, seed=args.eval_seed, sampling=sampling,
                            sandbox=sandbox)
    repeat = None
    if args.repeat_eval:
        repeat = evaluate_toy_coder(out, n_per_length=args.n_per_length, seed=args.eval_seed, sampling=sampling,
                                    sandbox=sandbox)
        ev["repeat_identical"] = repeat["pass_at_1_by_length"] == ev["pass_at_1_by_length"]
    save_eval(ev, out / "eval.json")
    write_card(out, ev)
    print(json.dumps({k: ev[k] for k in ("pass_at_1_by_length", "pass_at_1_by_bucket", "failures",
                                         "passes_with_fix", "samples_with_comment", "samples_with_noop")}, indent=2))


if __name__ == "__main__":
    main()
