"""Sparse autoencoders in SAELens's on-disk format: ``cfg.json`` + ``sae_weights.safetensors``.

SAELens cannot be imported beside TransformerLens 4 (it needs ``transformer-lens<4`` and
``HookedTransformer``), yet its folder layout is how the community publishes SAEs (Gemma
Scope, Llama Scope and others). This module reads and writes that layout with torch and
safetensors alone:

* ``sae_weights.safetensors``: ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``
  [d_sae], ``b_dec`` [d_in], and ``threshold`` [d_sae] for JumpReLU.
* ``cfg.json`` (SAELens 6): ``architecture`` (``standard`` = ReLU, ``topk``, ``jumprelu``),
  ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``reshape_activations``, ``k`` (topk) and ``meta`` with
  ``model_name``, ``hook_name``, ``hook_head_index`` and the rest. SAELens 5 and older put
  ``hook_name`` / ``model_name`` at the top level and named the ReLU SAE by
  ``activation_fn_str``; both are read.

The maths, as SAELens computes it: ``x' = norm_in(x) - b_dec`` (when
``apply_b_dec_to_input``), ``pre = x' W_enc + b_enc``; ReLU: ``relu(pre)``; JumpReLU:
``relu(pre) * (pre > threshold)``; TopK: the k largest of ``pre`` through a ReLU, zero
elsewhere; ``decode(f) = norm_out(f W_dec + b_dec)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitlab._resources import atomic_folder
from circuitlab.errors import CircuitlabError

__all__ = [
    "ARCHITECTURES",
    "CFG_FILE",
    "SAE",
    "SAEError",
    "WEIGHTS_FILE",
    "load_sae",
]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu")
Architecture = Literal["standard", "topk", "jumprelu"]
# Normalisations that need nothing but the input itself (SAELens's
# ``expected_average_only_in`` needs a dataset-wide scaling factor the folder may not carry).
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
_HOOK = re.compile(r"^blocks\.(\d+)\.")


class SAEError(CircuitlabError):
    """An SAE folder that cannot be read, or an SAE that does not fit the model."""


def _default_meta() -> dict[str, Any]:
    return {"model_name": None, "hook_name": None, "hook_head_index": None}


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder over one hook point's activations.

    Attributes:
        architecture: ``standard`` (ReLU), ``topk`` or ``jumprelu``.
        W_enc, W_dec, b_enc, b_dec: the weights, SAELens's names and shapes.
        threshold: per-latent JumpReLU threshold (``jumprelu`` only).
        k: active latents per token (``topk`` only).
        hook_name: the TL hook the SAE reads and writes (``blocks.22.hook_resid_pre``).
        model_name: the model it was trained on (informational).
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (SAELens's default).
        normalize_activations: ``none``, ``constant_norm_rescale`` or ``layer_norm``.
        meta: the rest of SAELens's ``meta`` (kept and written back unchanged), plus
            circuitlab's training record under ``circuitlab``.
    """

    architecture: Architecture
    W_enc: Float[Tensor, "d_in d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_enc: Float[Tensor, " d_sae"]
    b_dec: Float[Tensor, " d_in"]
    hook_name: str
    model_name: str | None = None
    threshold: Float[Tensor, " d_sae"] | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; known {ARCHITECTURES}")
        d_in, d_sae = self.W_enc.shape
        shapes = {
            "W_dec": (self.W_dec, (d_sae, d_in)),
            "b_enc": (self.b_enc, (d_sae,)),
            "b_dec": (self.b_dec, (d_in,)),
        }
        if self.architecture == "jumprelu":
            if self.threshold is None:
                raise SAEError("a jumprelu SAE needs a threshold tensor")
            shapes["threshold"] = (self.threshold, (d_sae,))
        for name, (tensor, shape) in shapes.items():
            if tuple(tensor.shape) != shape:
                raise SAEError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= d_sae):
            raise SAEError(f"a topk SAE needs 0 < k <= d_sae ({d_sae}), got k={self.k}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEError(
                f"normalize_activations={self.normalize_activations!r} is not supported "
                f"(supported: {NORMALIZATIONS}); fold the scaling factor into the weights first"
            )

    # ------------------------------------------------------------------------------ facts
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def layer(self) -> int:
        """The block index in ``hook_name`` (``blocks.22.hook_resid_pre`` -> 22)."""
        match = _HOOK.match(self.hook_name)
        if match is None:
            raise SAEError(f"hook {self.hook_name!r} names no block (blocks.N....)")
        return int(match.group(1))

    @property
    def hash(self) -> str:
        """Content hash of the weights and the settings that change the maths."""
        digest = hashlib.sha256(
            json.dumps(
                [self.architecture, self.k, self.hook_name, self.apply_b_dec_to_input,
                 self.normalize_activations]
            ).encode()
        )  # fmt: skip
        for name, tensor in sorted(self.tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def tensors(self) -> dict[str, Tensor]:
        """The weights by SAELens name (``threshold`` only for JumpReLU)."""
        out = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SAE:
        """A copy on ``device`` (and ``dtype``), for encoding beside the model."""
        moved = {n: t.to(device=device, dtype=dtype or t.dtype) for n, t in self.tensors().items()}
        return SAE(
            self.architecture, moved["W_enc"], moved["W_dec"], moved["b_enc"], moved["b_dec"],
            self.hook_name, self.model_name, moved.get("threshold"), self.k,
            self.apply_b_dec_to_input, self.normalize_activations, dict(self.meta),
        )  # fmt: skip

    def check_model(self, model) -> None:
        """Raise :class:`SAEError` unless the SAE fits ``model`` (d_model and hook point)."""
        d_model = model.facts.d_model
        if self.d_in != d_model:
            raise SAEError(
                f"the SAE reads {self.d_in}-dimensional activations, the model's d_model is "
                f"{d_model}: it was trained on another model ({self.model_name or 'unknown'})"
            )
        if self.hook_name not in model.bridge.hook_dict:
            raise SAEError(
                f"the SAE's hook {self.hook_name!r} does not exist on this model (layers 0.."
                f"{model.n_layers - 1}); SAEs from other tools may need the name in TL form"
            )

    # ---------------------------------------------------------------------------- maths
    def _norm_in(self, x: Tensor) -> tuple[Tensor, Any]:
        if self.normalize_activations == "constant_norm_rescale":
            coeff = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        if self.normalize_activations == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            return (x - mu) / (std + 1e-5), (mu, std)
        return x, None

    def _norm_out(self, x: Tensor, state: Any) -> Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return x / state
        if self.normalize_activations == "layer_norm":
            mu, std = state
            return x * std + mu
        return x

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """``(x - b_dec) W_enc + b_enc`` (input normalisation first, if any)."""
        x, _ = self._norm_in(x.to(self.W_enc.dtype))
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The architecture's nonlinearity applied to pre-activations."""
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latent activations (sparse, non-negative)."""
        return self.activate(self.pre_activations(x))

    def decode(
        self, acts: Float[Tensor, "... d_sae"], like: Tensor | None = None
    ) -> Float[Tensor, "... d_in"]:
        """``acts W_dec + b_dec``; with an input normalisation, ``like`` is the input whose
        scale is restored (required then)."""
        out = acts @ self.W_dec + self.b_dec
        if self.normalize_activations == "none":
            return out
        if like is None:
            raise SAEError(f"decode needs the input (like=) with {self.normalize_activations}")
        return self._norm_out(out, self._norm_in(like.to(self.W_enc.dtype))[1])

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(self.encode(x), like=x)

    # --------------------------------------------------------------------------- files
    def config(self) -> dict[str, Any]:
        """``cfg.json`` as SAELens 6 writes it (``meta`` keeps whatever it was loaded with)."""
        meta = {**_default_meta(), **self.meta, "model_name": self.model_name,
                "hook_name": self.hook_name}  # fmt: skip
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "meta": meta,
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
        return cfg

    def save(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` atomically (temp folder, rename)."""
        folder = Path(folder)
        tensors = {n: t.detach().contiguous().cpu() for n, t in self.tensors().items()}
        with atomic_folder(folder) as tmp:
            save_file(tensors, tmp / WEIGHTS_FILE)
            (tmp / CFG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return folder


def _architecture(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> str:
    arch = cfg.get("architecture")
    if arch is None:  # SAELens <= 5 named the ReLU SAE by its activation function
        activation = cfg.get("activation_fn_str", "relu")
        arch = "topk" if activation == "topk" else "standard"
    if arch == "jumprelu" and "threshold" not in tensors:
        raise SAEError("jumprelu SAE without a threshold tensor in its weights")
    return arch


def _from_folder(folder: Path) -> SAE:
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise SAEError(f"{folder} is not an SAE folder in SAELens's layout: no {path.name}")
    cfg = json.loads(cfg_path.read_text())
    tensors = load_file(weights_path)
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors))
    if missing:
        raise SAEError(f"{weights_path} lacks {missing}")
    meta = dict(cfg.get("meta") or {})
    hook = meta.get("hook_name") or cfg.get("hook_name")
    if not hook:
        raise SAEError(f"{cfg_path} names no hook (meta.hook_name or hook_name)")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    for key in ("d_in", "d_sae"):
        if key in cfg and cfg[key] != tensors["W_enc"].shape[0 if key == "d_in" else 1]:
            raise SAEError(f"{cfg_path}: {key}={cfg[key]} disagrees with W_enc's shape")
    meta.pop("hook_name", None)
    model_name = meta.pop("model_name", None) or cfg.get("model_name")
    return SAE(
        _architecture(cfg, tensors),
        tensors["W_enc"], tensors["W_dec"], tensors["b_enc"], tensors["b_dec"],
        hook, model_name, tensors.get("threshold"), None if k is None else int(k),
        bool(cfg.get("apply_b_dec_to_input", True)),
        cfg.get("normalize_activations") or "none", meta,
    )  # fmt: skip


def load_sae(source: str | Path, *, revision: str | None = None) -> SAE:
    """Load an SAE from a folder, or from the Hugging Face hub.

    Args:
        source: a local folder holding ``cfg.json`` and ``sae_weights.safetensors``, or a
            hub id ``org/repo`` (the SAE at the repository's root) or ``org/repo:sub/folder``
            (SAELens releases keep one SAE per folder, e.g. ``layer_12/width_16k/...``).
        revision: the hub revision.

    Returns:
        The :class:`SAE`. Raises :class:`SAEError` for a folder that is not one.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path)
    text = str(source)
    repo, _, sub = text.partition(":")
    if path.exists() or repo.count("/") != 1:
        raise SAEError(f"no SAE folder {text!r} (and it is not a hub id org/repo[:folder])")
    from huggingface_hub import hf_hub_download

    prefix = f"{sub.strip('/')}/" if sub else ""
    try:
        files = [
            hf_hub_download(repo, f"{prefix}{name}", revision=revision)
            for name in (CFG_FILE, WEIGHTS_FILE)
        ]
    except Exception as exc:  # the hub client raises many kinds for a missing repo or file
        raise SAEError(f"cannot download SAE {text!r}: {exc}".splitlines()[0]) from None
    return _from_folder(Path(files[0]).parent)
