"""One PPO iteration of prmlab against TRL's experimental PPOTrainer: time and peak memory, side by side.

Both sides get the same model, the same 16 training prompts (prmlab's seeded prompt choice of iteration 0), the same
batch (16 prompts x 1 sample, at most 64 new tokens, temperature 1, top-p 1), the same PPO shape (``--epochs`` PPO
epochs over minibatches of 8, i.e. two optimizer steps per epoch), the same LoRA (the preset's r, alpha and target
modules on the policy) and fp32 compute:

    prmlab   ``prmlab.rl.loop.ppo_iteration`` in the ``dense+value-init`` configuration: ONE base model (4-bit where
             the preset says so) with the ``policy``, ``prm`` and ``critic`` LoRA adapters, the PRM's line rewards
             at line ends, critic copied from the PRM. The PRM is a fresh one (``prmlab.prm.model.new_prm``: zero
             head, identity adapter), written and reloaded through ``build_state`` exactly as a trained one; it
             costs the same compute as a trained PRM (same adapter shapes, same forward), only its scores differ.
             Programs run in prmlab's sandbox; that time is measured apart and reported with and without.
    TRL      ``trl.experimental.ppo.PPOTrainer`` (trl 1.12.0) as its example script sets it up: the policy with
             ``peft_config`` (4-bit where the preset says so; the reference is the policy with the adapter
             disabled, TRL's peft path), a separate value model and a separate reward model
             (``AutoModelForSequenceClassification`` of the same checkpoint, ``num_labels=1``, fresh score head,
             fp32: the value model is trained in full, TRL's design), one scalar reward per sequence. TRL executes
             no program (it has no sandbox).

Each side runs in its own subprocess with ``torch.set_num_threads(1)``; the sides alternate ``--repeats`` times per
model and the median of the per-pair ratios is reported. Timed: exactly one PPO iteration (prmlab:
``ppo_iteration``; TRL: ``trainer.train()`` with ``total_episodes`` = the batch), cold for both (no warm-up
iteration for either); model loading, adapter set-up, the trainer's constructor and the sandbox's start are
excluded. Memory: ``ru_maxrss`` (``resource.getrusage(RUSAGE_SELF)``, the process's RSS high-water mark: loading
included) and, apart, the peak RSS sampled every 5 ms during the timed iteration (``/proc/self/statm``), both also
less the RSS after imports (what the models and the iteration add). tracemalloc is not used: it misses torch's
tensor storage.

    .venv/bin/python bench/bench_ppo_trl.py [--models tiny,cpu-real] [--repeats 2] [--epochs 1]

Needs ``pip install --no-deps trl==1.12.0`` (bench-only; not a prmlab dependency): without it the bench says so and
exits 2. Prints a table and writes runs/bench/ppo_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIP = "pip install --no-deps trl==1.12.0"
PROMPTS, NEW_TOKENS, MINIBATCH = 16, 64, 8
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


MEM_CAP_MB = [0.0]
"""The worker's RSS cap (``--mem-cap-mb``): past it the worker stops itself and reports the cap as a lower bound."""
MEM_FLOOR_MB = 1500.0
"""The worker also stops itself when the machine's available memory falls below this (other jobs grew meanwhile);
its peak so far is then reported as a lower bound."""


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:")) / 1024


def over_cap(side: str, peak: float) -> None:
    """Report a side that passed the memory cap (or left the machine under ``MEM_FLOOR_MB``) and end the process at
    once, before the kernel's OOM killer picks a process on this shared machine, possibly someone else's; its RSS so
    far is a lower bound of its peak."""
    print("RESULT " + json.dumps({"side": side, "over_cap_mb": peak, "cap_mb": MEM_CAP_MB[0],
                                  "available_mb": mem_available_mb()}), flush=True)
    os._exit(3)


class PeakSampler:
    """Highest RSS seen every ``period`` seconds while active (a background thread); past ``MEM_CAP_MB`` the
    process reports it and exits."""

    def __init__(self, side: str = "", period: float = 0.005):
        self.side, self.period, self.peak, self._stop = side, period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            if MEM_CAP_MB[0] and (self.peak > MEM_CAP_MB[0] or mem_available_mb() < MEM_FLOOR_MB):
                over_cap(self.side, self.peak)
            time.sleep(self.period)

    def __enter__(self) -> "PeakSampler":
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def configs(preset_name: str, epochs: int):
    """The preset's Config and the benchmark's RLConfig (dense+value-init, the matched batch and PPO shape)."""
    import dataclasses

    from prmlab.config import preset
    from prmlab.rl.stage import variant_config

    cfg = preset(preset_name)
    rl = dataclasses.replace(cfg.rl, prompts_per_iteration=PROMPTS, samples_per_prompt=1, max_new_tokens=NEW_TOKENS,
                             ppo_epochs=epochs, minibatch_size=MINIBATCH, temperature=1.0)
    rl = variant_config(rl, "dense+value-init")
    return dataclasses.replace(cfg, rl=rl), rl


def bench_tasks(cfg, rl):
    """The 16 tasks of prmlab's first iteration (seeded prompt choice from the training mix)."""
    from prmlab.rl.loop import choose_rows, prompt_mix
    from prmlab.tasks import load_tasks

    mix = prompt_mix(load_tasks(cfg.tasks, "train"), rl)
    return mix, [t for t, _, _ in choose_rows(mix, rl, 0)]


# ----------------------------------------------------------------------------------------------------------------
# the two sides (each in its own subprocess)


def worker_prmlab(preset_name: str, epochs: int) -> dict:
    import dataclasses
    import tempfile

    import torch

    from prmlab.models import load_base_model, load_tokenizer
    from prmlab.prm.model import new_prm, save_prm
    from prmlab.rl.loop import ppo_iteration
    from prmlab.rl.stage import build_state
    from prmlab.sandbox import Sandbox
    import peft  # noqa: F401  (imported before the baseline, as TRL's side imports its libraries)
    import transformers  # noqa: F401

    base_rss = rss_mb()
    cfg, rl = configs(preset_name, epochs)
    mix, tasks = bench_tasks(cfg, rl)
    tok = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_ppo_trl_"))
    prm = new_prm(cfg.model, model=model, tokenizer=tok)  # fresh PRM: same compute as a trained one
    save_prm(prm, run_dir / "prm", {"model": dataclasses.asdict(cfg.model)})
    state = build_state(cfg, rl, run_dir, prm.model, tok)  # policy, prm (loaded), critic <- prm
    exec_s = [0.0]
    with Sandbox(dataclasses.replace(cfg.sandbox, allow_execution=True)) as box:
        def execute(pairs):
            t0 = time.perf_counter()
            out = box.run_many(pairs)
            exec_s[0] += time.perf_counter() - t0
            return out

        loaded_rss = rss_mb()
        with PeakSampler("prmlab") as peak:
            t0 = time.perf_counter()
            row = ppo_iteration(state, rl, tasks, execute, token_healing=cfg.sampling.token_healing)
            seconds = time.perf_counter() - t0
    return {"side": "prmlab", "seconds": seconds, "exec_seconds": exec_s[0], "maxrss_mb": maxrss_mb(),
            "iter_peak_mb": peak.peak, "import_rss_mb": base_rss, "loaded_rss_mb": loaded_rss,
            "response_tokens": row["response_tokens"], "pass_rate": row["pass_rate"],
            "return_prm": row["return_prm"],
            "torch_threads": torch.get_num_threads()}


def worker_trl(preset_name: str, epochs: int) -> dict:
    import tempfile
    import warnings

    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        return {"side": "trl", "missing": True}
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from prmlab.models import load_base_model, load_tokenizer, lora_config, resolve_model_path
    from prmlab.sampling import format_prompt, stop_token_ids
    import peft  # noqa: F401

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    base_rss = rss_mb()
    cfg, rl = configs(preset_name, epochs)
    _, tasks = bench_tasks(cfg, rl)
    tok = load_tokenizer(cfg.model)  # left padding, pad token set: as prmlab
    policy = load_base_model(cfg.model)  # 4-bit where the preset says so (TRL's example quantizes the policy)
    path = resolve_model_path(cfg.model)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    prompts = [format_prompt(t, tok, cfg.model.track) for t in tasks]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]  # no BOS, as prmlab's sampler
    data = Dataset.from_dict({"input_ids": ids})
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    args = PPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        disable_tqdm=True, logging_steps=1, seed=rl.seed,
        per_device_train_batch_size=PROMPTS, gradient_accumulation_steps=1,
        num_mini_batches=PROMPTS // MINIBATCH, num_ppo_epochs=epochs, total_episodes=PROMPTS,
        local_rollout_forward_batch_size=PROMPTS, response_length=NEW_TOKENS, temperature=rl.temperature,
        stop_token_id=stop_token_ids(tok, policy)[0], learning_rate=rl.lr, kl_coef=rl.kl_beta,
        kl_estimator=rl.kl_estimator, cliprange=rl.clip, cliprange_value=rl.value_clip, gamma=rl.gamma,
        lam=rl.gae_lambda, max_grad_norm=rl.max_grad_norm, num_sample_generations=0,
        dataloader_num_workers=0)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=data, value_model=value, eval_dataset=data,
                         peft_config=lora_config(cfg.model))
    lengths: list[float] = []
    trainer.log = lambda logs, *a, **k: lengths.append(logs.get("val/num_eos_tokens", -1))  # no printing
    loaded_rss = rss_mb()
    with PeakSampler("trl") as peak:
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return {"side": "trl", "seconds": seconds, "exec_seconds": 0.0, "maxrss_mb": maxrss_mb(),
            "iter_peak_mb": peak.peak, "import_rss_mb": base_rss, "loaded_rss_mb": loaded_rss,
            "finished_rows": lengths[0] if lengths else None, "torch_threads": torch.get_num_threads(),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def worker(side: str, preset_name: str, epochs: int, cap_mb: float) -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    MEM_CAP_MB[0] = cap_mb
    with PeakSampler(side):  # the cap also holds while loading
        result = (worker_prmlab if side == "prmlab" else worker_trl)(preset_name, epochs)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# the driver


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_side(side: str, preset_name: str, epochs: int, cap_mb: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--preset", preset_name, "--epochs", str(epochs),
           "--mem-cap-mb", f"{cap_mb:.0f}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore"}
    before = load_avg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if lines and "over_cap_mb" in lines[-1]:
        got = json.loads(lines[-1][len("RESULT "):])
        print(f"{side} on {preset_name} stopped itself at {got['over_cap_mb']:.0f} MB RSS (cap {cap_mb:.0f} MB, "
              f"{got['available_mb']:.0f} MB left on the machine) after {time.perf_counter() - t0:.0f} s wall; "
              f"load {load_avg()}", flush=True)
        return {**json.loads(lines[-1][len("RESULT "):]), "failed": "memory cap", "wall_s": time.perf_counter() - t0,
                "load_before": before}
    if proc.returncode != 0 or not lines:  # e.g. -9: killed by the kernel's OOM killer (see `dmesg`)
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
        print(f"{side} on {preset_name} FAILED (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s "
              f"wall; load {load_avg()}", flush=True)
        return {"side": side, "failed": proc.returncode, "wall_s": time.perf_counter() - t0, "load_before": before}
    out = json.loads(lines[-1][len("RESULT "):])
    out.update(load_before=before, load_after=load_avg(), wall_s=time.perf_counter() - t0)
    return out


def summarise(pairs: list[tuple[dict, dict]]) -> dict:
    pairs = [(p, t) for p, t in pairs if "failed" not in p and "failed" not in t]
    if not pairs:
        return {}

    def med(f):
        return statistics.median(f(p, t) for p, t in pairs)

    return {
        "prmlab_s": med(lambda p, t: p["seconds"]), "prmlab_exec_s": med(lambda p, t: p["exec_seconds"]),
        "trl_s": med(lambda p, t: t["seconds"]),
        "time_ratio": med(lambda p, t: p["seconds"] / t["seconds"]),
        "time_ratio_no_exec": med(lambda p, t: (p["seconds"] - p["exec_seconds"]) / t["seconds"]),
        "prmlab_maxrss_mb": med(lambda p, t: p["maxrss_mb"]), "trl_maxrss_mb": med(lambda p, t: t["maxrss_mb"]),
        "maxrss_ratio": med(lambda p, t: p["maxrss_mb"] / t["maxrss_mb"]),
        "maxrss_above_imports_ratio": med(lambda p, t: (p["maxrss_mb"] - p["import_rss_mb"])
                                          / (t["maxrss_mb"] - t["import_rss_mb"])),
        "iter_peak_ratio": med(lambda p, t: p["iter_peak_mb"] / t["iter_peak_mb"]),
        "iter_peak_above_imports_ratio": med(lambda p, t: (p["iter_peak_mb"] - p["import_rss_mb"])
                                             / (t["iter_peak_mb"] - t["import_rss_mb"])),
    }


TARGET_MEM = {"tiny": 0.6, "cpu-real": 0.5}


def bound(runs: list[dict]) -> str:
    """The memory ratio's upper bound when TRL passed the cap and prmlab finished (TRL's peak >= the cap)."""
    ok = [r for r in runs if "failed" not in r["prmlab"] and "over_cap_mb" in r["trl"]]
    if not ok:
        return ""
    ratios = [r["prmlab"]["maxrss_mb"] / r["trl"]["over_cap_mb"] for r in ok]
    return (f"; TRL stopped at {ok[0]['trl']['over_cap_mb']:.0f} MB (memory cap): maxrss ratio <= {max(ratios):.2f} "
            f"(prmlab {ok[0]['prmlab']['maxrss_mb']:.0f} MB, {ok[0]['prmlab']['seconds']:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,cpu-real", help="presets whose model to use: tiny (toy-coder), "
                    "cpu-real (SmolLM2-135M-Instruct, 4-bit)")
    ap.add_argument("--repeats", type=int, default=2, help="prmlab/TRL pairs per model, alternating order")
    ap.add_argument("--epochs", type=int, default=1, help="PPO epochs of both sides (minibatches of 8)")
    ap.add_argument("--mem-cap-mb", type=float, default=0.0, help="a side whose RSS passes this stops itself and "
                    "counts as 'at least the cap' (default: 85%% of the memory available at the start, so that "
                    "the kernel's OOM killer never has to pick a process on a shared machine)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "ppo_trl.json"))
    ap.add_argument("--worker", choices=("prmlab", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.preset, a.epochs, a.mem_cap_mb)
        return
    cap_mb = a.mem_cap_mb or 0.85 * mem_available_mb()
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        print(f"TRL is not installed; this benchmark needs it (bench-only):\n    {sys.executable} -m {PIP}")
        raise SystemExit(2)
    report: dict = {"epochs": a.epochs, "prompts": PROMPTS, "new_tokens": NEW_TOKENS, "minibatch": MINIBATCH,
                    "torch_threads_per_side": 1, "cpus": os.cpu_count(), "models": {}}
    for name in a.models.split(","):
        pairs = []
        for r in range(a.repeats):
            order = ("prmlab", "trl") if r % 2 == 0 else ("trl", "prmlab")
            got = {}
            for side in order:
                got[side] = run_side(side, name, a.epochs, cap_mb)
                g = got[side]
                if "failed" in g:
                    continue
                print(f"[{name} #{r + 1}] {side:6s} {g['seconds']:7.1f} s (exec {g['exec_seconds']:.1f} s)  "
                      f"maxrss {g['maxrss_mb']:6.0f} MB  iter peak {g['iter_peak_mb']:6.0f} MB  "
                      f"imports {g['import_rss_mb']:4.0f} MB  load {g['load_before']} -> {g['load_after']}",
                      flush=True)
            pairs.append((got["prmlab"], got["trl"]))
        s = summarise(pairs)
        report["models"][name] = {"summary": s, "runs": [{"prmlab": p, "trl": t} for p, t in pairs]}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nOne PPO iteration, {PROMPTS} prompts x {NEW_TOKENS} new tokens, {a.epochs} PPO epoch(s), minibatch "
          f"{MINIBATCH}; one torch thread per side; median over {a.repeats} alternating pair(s); ratios prmlab/TRL")
    print(f"{'model':9s} {'prmlab s':>9s} {'(exec)':>7s} {'TRL s':>7s} {'time':>6s} {'no exec':>7s} "
          f"{'maxrss MB p/T':>14s} {'maxrss':>6s} {'-imports':>8s} {'iter peak':>9s} {'-imports':>8s}  target")
    for name, m in report["models"].items():
        s = m["summary"]
        if not s:
            print(f"{name:9s} no complete pair (a side failed: see above)" + bound(m["runs"]))
            continue
        print(f"{name:9s} {s['prmlab_s']:9.1f} {s['prmlab_exec_s']:7.1f} {s['trl_s']:7.1f} {s['time_ratio']:6.2f} "
              f"{s['time_ratio_no_exec']:7.2f} {s['prmlab_maxrss_mb']:6.0f}/{s['trl_maxrss_mb']:<7.0f} "
              f"{s['maxrss_ratio']:6.2f} {s['maxrss_above_imports_ratio']:8.2f} {s['iter_peak_ratio']:9.2f} "
              f"{s['iter_peak_above_imports_ratio']:8.2f}  time<=1.0, mem<={TARGET_MEM.get(name, 0.5)}")
    print(f"load average now: {load_avg()}; written {a.out}")


if __name__ == "__main__":
    main()
