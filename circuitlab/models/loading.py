"""Turn what a user typed (preset, hub id, folder, ``.gguf``) into an HF model and tokenizer."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from circuitlab.errors import (
    HubUnreachableError,
    IntegrityError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from circuitlab.models.presets import PRESETS, get_preset, sha256_file

__all__ = ["ModelSpec", "ResolvedSource", "resolve_source", "convert_gguf", "load_hf"]

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it.

    Args:
        source: a preset name, a local HF folder, a ``.gguf`` file, or a hub id (``org/name``).
        device: torch device, or ``auto`` (CUDA when available).
        dtype: weight dtype name.
        cache_dir: where GGUF conversions and built presets are kept.
        trust_remote_code: let hub repositories run their own code (off unless asked).
    """

    source: str
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: Path = Path("cache")
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))  # accept str paths too

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass(frozen=True)
class ResolvedSource:
    kind: Literal["preset", "gguf", "dir", "hub"]
    location: str  # HF folder or hub id, after any GGUF conversion
    sha256: str | None = None  # of the GGUF it came from, if any


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith(".gguf") or os.sep in source[:1]


def resolve_source(spec: ModelSpec, progress: bool = False) -> ResolvedSource:
    """Decide what ``spec.source`` names; convert GGUF files to cached safetensors."""
    source = spec.source.strip()
    preset = get_preset(source)
    if preset is not None:
        path = preset.locate(spec.cache_dir)
        if path.suffix == ".gguf":
            folder, sha = convert_gguf(path, spec.cache_dir, preset.sha256, progress=progress)
            return ResolvedSource("preset", str(folder), sha)
        return ResolvedSource("preset", str(path))
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        folder, sha = convert_gguf(path, spec.cache_dir, progress=progress)
        return ResolvedSource("gguf", str(folder), sha)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{source} is a folder but has no config.json (not an HF model)"
            )
        return ResolvedSource("dir", str(path))
    if path.exists():
        raise ModelNotFoundError(f"{source} is neither a .gguf file nor an HF model folder")
    if _looks_like_path(source):
        raise ModelNotFoundError(f"no such file or folder: {source}")
    if "/" in source:
        return ResolvedSource("hub", source)
    raise ModelNotFoundError(
        f"unknown preset {source!r}; known presets: {', '.join(sorted(PRESETS))} "
        "(or give a local path, a .gguf file or a hub id like org/name)"
    )


def convert_gguf(
    gguf: Path, cache_dir: Path, expected_sha256: str | None = None, progress: bool = False
) -> tuple[Path, str]:
    """Dequantise a GGUF file to an fp32 safetensors folder under ``cache/models/``, once.

    The folder is keyed by the file's sha256, so a changed file is converted again and an
    unchanged one is reused. The folder appears under its final name only when complete.

    Returns:
        The HF folder and the GGUF's sha256.
    """
    sha = sha256_file(gguf)
    if expected_sha256 is not None and sha != expected_sha256:
        raise IntegrityError(
            f"{gguf} has sha256 {sha[:12]}…, expected {expected_sha256[:12]}… "
            "(corrupt or replaced?)"
        )
    target = cache_dir / "models" / f"{gguf.stem}-{sha[:12]}"
    if (target / "circuitlab_source.json").is_file():
        return target, sha
    log.info("converting %s to safetensors in %s", gguf, target)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ValueError as exc:  # transformers: "GGUF model with architecture X is not supported"
        raise UnsupportedArchitectureError(f"cannot read {gguf.name}: {exc}") from None
    # GGUF-loaded models are flagged as quantized and refuse to save; the weights are already
    # plain fp32 tensors, so dropping the flag is safe (the reload gives identical logits).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = model.config.architectures or [type(model).__name__]
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "circuitlab_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": sha}, indent=2)
        )
        tmp.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, sha


def _check_architecture(location: str, spec: ModelSpec, kind: str) -> None:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=spec.trust_remote_code)
    except OSError as exc:
        if kind == "hub":
            reason = str(exc).splitlines()[0][:160]
            raise HubUnreachableError(
                f"could not fetch {location!r} from the Hugging Face hub ({reason}); "
                f"use a preset ({', '.join(sorted(PRESETS))}) or a local path"
            ) from None
        raise ModelNotFoundError(f"cannot read the config of {location}: {exc}") from None
    except ValueError as exc:
        raise UnsupportedArchitectureError(f"{location}: {exc}".splitlines()[0]) from None
    architectures = config.architectures or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        causal = sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith("ForCausalLM"))
        raise UnsupportedArchitectureError(
            f"architecture {architectures or config.model_type!r} is not supported by the hook "
            f"engine (TransformerLens 4.3); supported causal LMs: {', '.join(causal)}"
        )


def load_hf(
    spec: ModelSpec, progress: bool = False
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, ResolvedSource]:
    """Load the HF model (eval mode, requested dtype and device) and its tokenizer."""
    resolved = resolve_source(spec, progress=progress)
    _check_architecture(resolved.location, spec, resolved.kind)
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    if resolved.kind == "hub":
        kwargs["local_files_only"] = False
    model = AutoModelForCausalLM.from_pretrained(
        resolved.location, dtype=DTYPES[spec.dtype], **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(resolved.location, **kwargs)
    model.config.architectures = model.config.architectures or [type(model).__name__]
    model.to(spec.torch_device).eval()
    model.requires_grad_(False)
    return model, tokenizer, resolved
