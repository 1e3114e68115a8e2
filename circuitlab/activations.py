"""Collect residual-stream activations (and response labels) once; reuse them from cache/.

Activations are content-addressed: the file name is a hash of the model's weights, the
prompts, the positions, the hook, the layers and the chat formatting, so a changed model or
prompt set is collected again and an unchanged one is read back (safetensors, no pickle).
Completions used for labels are cached the same way as JSON; the judge is applied afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from circuitlab._resources import atomic_write, json_hash, text_hash
from circuitlab.models.loading import readable_parameters
from circuitlab.prompts import prompts_hash

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel, Positions

__all__ = [
    "MASSIVE_RATIO",
    "massive_directions",
    "collect_activations",
    "select_position",
    "generate_completions",
    "response_labels",
    "model_fingerprint",
    "Judge",
]

log = logging.getLogger(__name__)

# judge(prompts, responses) -> one refused? per response, or an object whose ``is_refusal``
# holds them (``circuitlab.evaluate.judges.Judgements``), so ``MarkerJudge().judge`` fits.
Judge = Callable[[Sequence[str], Sequence[str]], Any]

# Values sampled per weight tensor for the model fingerprint.
_FINGERPRINT_SAMPLES = 4096


def model_fingerprint(model: HookedModel) -> str:
    """Hash of the config, every parameter's name and shape, and a strided sample of values.

    Hashing every byte of a 12B model would take minutes; an edit (ablation, fine-tune)
    changes values throughout a matrix, which a strided sample catches.
    """
    digest = hashlib.sha256(model.hf_model.config.to_json_string().encode())
    with torch.no_grad():
        for name, param in readable_parameters(model.hf_model):
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _FINGERPRINT_SAMPLES)][:_FINGERPRINT_SAMPLES]
            digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _key(model: HookedModel, prompts: Sequence[str], **parts: Any) -> dict[str, str]:
    """Everything that changes the result, as strings (safetensors metadata is str -> str)."""
    template = model.tokenizer.chat_template or ""
    formatting = {
        "system_prompt": model.system_prompt,
        "chat_template": text_hash(template),
    }
    key = {"model": model_fingerprint(model), "prompts": prompts_hash(prompts), **formatting}
    key.update(parts)
    return {name: json.dumps(value) for name, value in sorted(key.items())}


def _cache_file(cache_dir: str | Path, key: dict[str, str], suffix: str) -> Path:
    digest = json_hash(key)
    model = json.loads(key["model"])
    prompts = json.loads(key["prompts"])
    return Path(cache_dir) / "activations" / model / f"{prompts}-{digest}{suffix}"


def _read_cached(path: Path, key: dict[str, str]) -> Tensor | None:
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as handle:
        if handle.metadata() != key:
            log.warning("ignoring %s: its key differs from the request", path)
            return None
        return handle.get_tensor("activations")


# A token is massive when its residual norm exceeds this multiple of its layer's median
# token norm. Measured on 8 harmless prompts: SmolLM2-135M's sinks are >= 43x (layers 12-28),
# its other tokens <= 17x; Gemma 3 270M's >= 27x (layer 1) against <= 14x.
MASSIVE_RATIO = 20.0


@torch.no_grad()
def massive_directions(
    model: HookedModel,
    prompts: Sequence[str],
    *,
    n_prompts: int = 8,
    k: int = 1,
    ratio: float = MASSIVE_RATIO,
    batch_size: int = 8,
    chat: bool = True,
) -> Float[Tensor, "k_found d_model"]:
    """The top-``k`` directions shared by massive-norm tokens, over every layer.

    Runs the prompts once, reads ``hook_resid_pre`` of every layer at every real (not
    padding) token, keeps the tokens whose norm exceeds ``ratio`` times their layer's median
    token norm, and returns the leading right singular vectors of those tokens' unit
    vectors (a sink's direction barely changes across layers and prompts: on SmolLM2 the
    second singular value is 1 % of the first).

    Args:
        prompts: ordinary prompts; the chat template is applied.
        n_prompts: how many of them to run (the first ones; 8 are plenty).
        k: directions to return at most.
        ratio: the massive-token threshold, in multiples of the layer's median token norm.

    Returns:
        float32 unit rows, ``[k_found, d_model]``; ``k_found`` is 0 when no token is
        massive (then there is nothing to remove).
    """
    prompts = list(prompts)[:n_prompts]
    if not prompts:
        raise ValueError("massive_directions needs at least one prompt")
    if k < 1 or ratio <= 1:
        raise ValueError(f"need k >= 1 and ratio > 1, got k={k}, ratio={ratio}")
    found: list[Tensor] = []
    mask = {"valid": None}

    def read(x: Tensor, hook) -> None:
        norms = x.detach().double().norm(dim=-1)
        valid = mask["valid"]
        big = valid & (norms > ratio * norms[valid].median())
        if big.any():
            found.append(x.detach()[big].double().cpu())

    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.n_layers)]
    with model.hooks([(name, read) for name in names]):
        for start in range(0, len(prompts), batch_size):
            batch = model.encode(prompts[start : start + batch_size], chat=chat)
            mask["valid"] = batch["attention_mask"].bool()
            model.hf_model.model(**batch, use_cache=False)
    d_model = model.facts.d_model
    if not found:
        log.info("no massive tokens (norm > %.0fx the median) in %d prompts", ratio, len(prompts))
        return torch.zeros(0, d_model)
    rows = torch.cat(found)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    _, values, vh = torch.linalg.svd(rows, full_matrices=False)
    log.info(
        "%d massive token activations; singular values %s",
        len(rows),
        ", ".join(f"{v:.3g}" for v in (values[: k + 2] / values[0]).tolist()),
    )
    return vh[:k].float()


def collect_activations(
    model: HookedModel,
    prompts: Sequence[str],
    *,
    positions: Positions = "last",
    layers: Sequence[int] | None = None,
    hook: str = "hook_resid_pre",
    batch_size: int = 16,
    chat: bool = True,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
) -> Float[Tensor, "prompt layer pos d_model"]:
    """Residual activations at the last prompt token(s) for every (or the given) layer.

    Args:
        model: the hooked model. While any hook is attached the cache is bypassed, since
            the activations then depend on the edit.
        prompts: user messages (a PromptSet works too).
        positions: ``"last"``, ``"post_instruction"`` (the template tokens after the user
            text) or a number of final tokens.
        layers: layers to read (default: all); layer ``l`` is ``blocks.{l}.{hook}``.
        batch_size: prompts per forward pass.
        chat: apply the chat template.
        cache_dir: root of the cache (files go under ``activations/``); ``None`` disables it.

    Returns:
        float32 CPU tensor; take means in float64 (the extractors do).
    """
    prompts = list(prompts)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    use_cache = cache_dir is not None and model.n_active_hooks() == 0
    if cache_dir is not None and not use_cache:
        log.info("hooks are attached: activations are collected without the cache")
    if use_cache:
        key = _key(model, prompts, positions=positions, layers=layers, hook=hook, chat=chat)
        path = _cache_file(cache_dir, key, ".safetensors")
        cached = _read_cached(path, key)
        if cached is not None:
            log.info("activations read from %s", path)
            return cached
    acts = model.collect(prompts, layers, positions, hook, batch_size, chat, progress)
    if use_cache:
        atomic_write(path, lambda tmp: save_file({"activations": acts}, tmp, metadata=key))
        log.info("activations cached in %s", path)
    return acts


def select_position(
    acts: Float[Tensor, "prompt layer pos d_model"],
    how: Literal["last", "mean"] | int = "last",
) -> Float[Tensor, "prompt layer d_model"]:
    """One vector per prompt and layer, the shape extractors take.

    Args:
        how: ``"last"`` (the final prompt token), ``"mean"`` over the collected positions
            (float64 accumulation, returned as float32), or an index into them.
    """
    if acts.ndim != 4:
        raise ValueError(f"expected [prompt, layer, pos, d_model], got {tuple(acts.shape)}")
    if how == "last":
        return acts[:, :, -1]
    if how == "mean":
        return acts.to(torch.float64).mean(2).float()
    return acts[:, :, how]


def generate_completions(
    model: HookedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    chat: bool = True,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
) -> list[str]:
    """Greedy completions, cached as JSON under the same key scheme as activations."""
    prompts = list(prompts)
    use_cache = cache_dir is not None and model.n_active_hooks() == 0
    if use_cache:
        key = _key(model, prompts, kind="completions", max_new_tokens=max_new_tokens, chat=chat)
        path = _cache_file(cache_dir, key, ".completions.json")
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return list(stored["completions"])
    completions = model.generate(
        prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, progress=progress
    )
    if use_cache:
        text = json.dumps({"key": key, "prompts": prompts, "completions": completions}, indent=1)
        atomic_write(path, text)
    return completions


def response_labels(
    model: HookedModel,
    prompts: Sequence[str],
    judge: Judge,
    **generate_options: Any,
) -> list[bool]:
    """Whether the model refuses each prompt, judged on its own greedy completion.

    Args:
        judge: ``judge(prompts, responses)`` returning one bool (refused) per response, or
            judgements with an ``is_refusal`` list (e.g. ``MarkerJudge().judge``).
        generate_options: passed to :func:`generate_completions`.

    Returns:
        One label per prompt, True for a refusal.
    """
    prompts = list(prompts)
    completions = generate_completions(model, prompts, **generate_options)
    verdicts = judge(prompts, completions)
    labels = [bool(v) for v in getattr(verdicts, "is_refusal", verdicts)]
    if len(labels) != len(prompts):
        raise ValueError(f"judge returned {len(labels)} labels for {len(prompts)} responses")
    log.info("%d of %d prompts refused", sum(labels), len(labels))
    return labels
