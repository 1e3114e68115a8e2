"""Turn what a user typed (preset, hub id, folder, ``.gguf``) into an HF model and tokenizer."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from circuitlab._resources import atomic_folder, file_sha256
from circuitlab.errors import (
    CircuitlabError,
    HubUnreachableError,
    IntegrityError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from circuitlab.models.presets import PRESETS, get_preset
from circuitlab.models.support import check_generative

__all__ = [
    "ModelSpec",
    "ResolvedSource",
    "convert_gguf",
    "dense_weight",
    "input_device",
    "is_quantized",
    "load_hf",
    "module_device",
    "readable_parameters",
    "resolve_source",
    "source_files",
]

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
        device_map: ``auto``, ``balanced``, ``sequential`` or an explicit map (module name
            -> device) for a model split over several devices; ``device`` is then ignored.
        max_memory: per-device budget for the dispatcher (``{"0": "20GiB", "cpu": "64GiB"}``).
        quantization: ``4bit`` (NF4) or ``8bit`` through bitsandbytes; the search runs on
            the quantized weights and the export folds into the source files.
    """

    source: str
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: Path = Path("cache")
    trust_remote_code: bool = False
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[str, Any] | None = None
    quantization: Literal["4bit", "8bit"] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))  # accept str paths too
        if isinstance(self.device_map, str) and self.device_map.lstrip().startswith("{"):
            object.__setattr__(self, "device_map", json.loads(self.device_map))
        if isinstance(self.max_memory, str):
            object.__setattr__(self, "max_memory", json.loads(self.max_memory))

    @classmethod
    def from_settings(cls, source: str, settings: Any) -> ModelSpec:
        """The spec a command builds from :class:`circuitlab.config.Settings`."""
        return cls(
            source,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            trust_remote_code=settings.trust_remote_code,
            device_map=getattr(settings, "device_map", None),
            max_memory=getattr(settings, "max_memory", None),
            quantization=getattr(settings, "quantization", None),
        )

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
    sha = file_sha256(gguf)
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
    with atomic_folder(target, create=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "circuitlab_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": sha}, indent=2)
        )
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
    check_generative(architectures, config.model_type)


def _quantization_config(spec: ModelSpec):
    if spec.quantization is None:
        return None
    try:
        import bitsandbytes  # noqa: F401 - only to fail early with a clear message
    except ImportError:
        raise CircuitlabError(
            f"quantization={spec.quantization!r} needs bitsandbytes (pip install bitsandbytes)"
        ) from None
    from transformers import BitsAndBytesConfig

    compute = DTYPES[spec.dtype] if spec.dtype != "float32" else torch.bfloat16
    if spec.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_hf(
    spec: ModelSpec, progress: bool = False
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, ResolvedSource]:
    """Load the HF model (eval mode, requested dtype and placement) and its tokenizer.

    With ``device_map`` (or a quantization, which bitsandbytes places itself) the
    dispatcher places the weights; otherwise the whole model moves to ``spec.device``.
    """
    resolved = resolve_source(spec, progress=progress)
    _check_architecture(resolved.location, spec, resolved.kind)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if resolved.kind == "hub":
        kwargs["local_files_only"] = False
    tokenizer = AutoTokenizer.from_pretrained(resolved.location, **kwargs)
    quantization = _quantization_config(spec)
    device_map = spec.device_map
    if quantization is not None and device_map is None:
        device_map = {"": spec.torch_device}  # bitsandbytes quantizes while placing
    if device_map is not None:
        kwargs["device_map"] = device_map
        if spec.max_memory is not None:
            kwargs["max_memory"] = {_memory_key(k): v for k, v in spec.max_memory.items()}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = _auto_class(resolved.location, spec).from_pretrained(
        resolved.location, dtype=DTYPES[spec.dtype], **kwargs
    )
    model.config.architectures = model.config.architectures or [type(model).__name__]
    if device_map is None:
        model.to(spec.torch_device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, resolved


def _auto_class(location: str, spec: ModelSpec):
    """The class the checkpoint names (``config.architectures``), so a multimodal wrapper
    (``Llama4ForConditionalGeneration``, whose ``model_type`` the causal mapping also lists)
    loads as itself and its export reloads as the same class; otherwise
    ``AutoModelForCausalLM``, or the image-text-to-text class for a wrapper the causal
    mapping lacks (Mistral 3's ``Mistral3ForConditionalGeneration``)."""
    import transformers
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(location, trust_remote_code=spec.trust_remote_code)
    named = getattr(transformers, (config.architectures or [""])[0], None)
    if isinstance(named, type) and hasattr(named, "from_pretrained"):
        return named
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not hasattr(config, "text_config"):
        return AutoModelForCausalLM
    return AutoModelForImageTextToText


def _memory_key(key: str) -> str | int:
    """``max_memory`` keys: GPU indices as ints, ``cpu``/``disk`` as names (JSON has only str)."""
    return int(key) if str(key).isdigit() else key


# ------------------------------------------------------------------------ placement facts
def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes: its weights' device, or for an offloaded module (weights
    on ``meta``, streamed in by the dispatcher) the dispatcher's execution device."""
    param = next(module.parameters(), None)
    if param is not None and param.device.type != "meta":
        return param.device
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return torch.device(device if device is not None else "cpu")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where token ids go: the device of the input embedding (the first device of a map)."""
    return module_device(model.get_input_embeddings())


def is_quantized(model: torch.nn.Module) -> bool:
    """Loaded through a quantizer (bitsandbytes): live weights are not the source tensors."""
    return getattr(model, "hf_quantizer", None) is not None or bool(
        getattr(model, "is_quantized", False)
    )


def dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a plain floating ``[out, in]`` tensor: dequantized from
    bitsandbytes storage, or read from the dispatcher's host copy when the module is
    offloaded; GPT-2's ``Conv1D`` (stored ``[in, out]``) comes back transposed, so callers
    see one orientation."""
    from transformers.pytorch_utils import Conv1D

    weight = _stored_weight(module)
    return weight.T if isinstance(module, Conv1D) else weight


def _stored_weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    if weight.device.type == "meta":
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights is None:
            raise CircuitlabError(f"{type(module).__name__}.weight is on meta with no copy")
        return weights["weight"]
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes 4-bit
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    scale = getattr(weight, "SCB", None)
    if scale is None:
        scale = getattr(getattr(module, "state", None), "SCB", None)
    if weight.dtype == torch.int8 and scale is not None:  # bitsandbytes 8-bit (LLM.int8)
        return weight.data.float() * (scale.float()[:, None] / 127.0)
    return weight


def readable_parameters(model: torch.nn.Module):
    """``(name, tensor)`` for every parameter, an offloaded one (on ``meta``) read from the
    dispatcher's host copy, so that hashing or inspecting weights works on split models.
    Names and order are ``named_parameters()``'s (a tied parameter comes once)."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{attr}" if module_name else attr
            if param.device.type == "meta":
                weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
                if weights is not None:
                    yield name, weights[attr]
                    continue
            yield name, param


def source_files(resolved: ResolvedSource) -> list[Path]:
    """The safetensors files a model was loaded from ([] when there are none to read:
    a hub model not in the local cache, or weights stored some other way)."""
    folder = Path(resolved.location)
    if resolved.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(resolved.location, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached, offline, no hub client: no files
            return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in names]
        return files if all(f.is_file() for f in files) else []
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []
