"""A small TopK SAE trainer on cached token activations.

Why our own trainer and not EleutherAI's ``eai-sparsify`` (the maintained TopK trainer
without TransformerLens): sparsify trains while it runs the model over a tokenized
``datasets`` corpus, hooking Hugging Face modules by name, and writes its own format. Here
the activations are already collected and cached (chat texts, attention sinks left out,
see :mod:`circuitlab.sae.data`) and the SAE must be written in SAELens's format; sparsify
would add ``datasets``, ``accelerate``, ``schedulefree``, ``simple-parsing`` and
``natsort`` for a loop this file does in about a hundred lines.

The recipe follows Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"): TopK
activation, decoder rows kept at unit norm (and their gradient made orthogonal to them),
encoder initialised as the decoder's transpose, ``b_dec`` at the data mean, Adam, and the
AuxK loss that lets latents dead for a while reconstruct the residual error. Inputs are
scaled so the mean squared norm is ``d_in``; the scale is folded back into the weights, so
the saved SAE reads raw activations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.progress import progress_bar
from circuitlab.sae.data import token_activations, with_answers
from circuitlab.sae.format import SAE

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = ["TrainConfig", "TrainResult", "fit_sae", "train_topk"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_topk` (the defaults are the organism's full-size run).

    Attributes:
        expansion: latents per input dimension (d_sae = expansion * d_in).
        k: active latents per token.
        epochs: passes over the token activations.
        batch_size: tokens per step.
        lr: Adam's learning rate (Gao et al.'s 2e-4 at 16k latents, scaled by
            ``1/sqrt(d_sae / 16384)`` when ``None``).
        aux_k: latents the AuxK loss reads (``None``: d_in / 2).
        aux_coefficient: weight of the AuxK loss.
        dead_tokens: a latent that has not fired for this many tokens counts as dead for
            the AuxK loss.
        seed: initialisation and shuffling.
    """

    expansion: int = 8
    k: int = 32
    epochs: int = 8
    batch_size: int = 1024
    lr: float | None = None
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 100_000
    seed: int = 0


@dataclass
class TrainResult:
    """The trained SAE and how training went.

    Attributes:
        sae: the trained SAE.
        losses: mean normalised MSE per epoch (fraction of variance unexplained on the
            training tokens).
        seconds: wall time of the loop.
        steps: optimiser steps.
        n_tokens: training tokens.
        mean: mean training activation (the mean-ablation reference of the CE figure).
    """

    sae: SAE
    losses: list[float]
    seconds: float
    steps: int
    n_tokens: int
    mean: Float[Tensor, " d_in"] | None = None


def _topk(pre: Tensor, k: int) -> Tensor:
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def _unit_rows(w: Tensor) -> Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _aux_loss(pre: Tensor, dead: Tensor, residual: Tensor, w_dec: Tensor, k_aux: int) -> Tensor:
    """AuxK: the top ``k_aux`` dead latents reconstruct what the live ones missed."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_tensor(0.0)
    masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
    acts = _topk(masked, min(k_aux, n_dead))
    error = (acts @ w_dec - residual).pow(2).sum(-1).mean()
    return error / residual.pow(2).sum(-1).mean().clamp_min(1e-8)


def train_topk(
    acts: Float[Tensor, "token d_in"],
    hook_name: str,
    config: TrainConfig = TrainConfig(),
    *,
    model_name: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a TopK SAE on token activations.

    Args:
        acts: training activations (float32), e.g. :func:`circuitlab.sae.token_activations`.
        hook_name: where they were read (recorded in the SAE).
        config: sizes and optimiser settings.
        model_name: recorded in the SAE's ``cfg.json``.

    Returns:
        The SAE (reading raw activations) and the training record.
    """
    generator = torch.Generator().manual_seed(config.seed)
    n, d_in = acts.shape
    d_sae = config.expansion * d_in
    if not 0 < config.k <= d_sae:
        raise ValueError(f"k={config.k} must be in [1, d_sae={d_sae}]")
    x_all = acts.float()
    mean = x_all.double().mean(0).float()
    # Scale so that E|x - mean|^2 = d_in: the learning rate then means the same at any layer.
    scale = math.sqrt(d_in / float((x_all - mean).pow(2).sum(-1).mean()))
    w_dec = _unit_rows(torch.randn(d_sae, d_in, generator=generator))
    params = {
        "W_enc": torch.nn.Parameter(w_dec.T.clone()),
        "W_dec": torch.nn.Parameter(w_dec),
        "b_enc": torch.nn.Parameter(torch.zeros(d_sae)),
        "b_dec": torch.nn.Parameter(mean * scale),
    }
    lr = config.lr or 2e-4 / math.sqrt(d_sae / 16384)
    optim = torch.optim.Adam(params.values(), lr=lr, betas=(0.9, 0.999))
    k_aux = config.aux_k or d_in // 2
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    losses, steps, started = [], 0, time.perf_counter()
    total = config.epochs * math.ceil(n / config.batch_size)
    with progress_bar(total, "training SAE", progress) as advance:
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            epoch_loss = 0.0
            for start in range(0, n, config.batch_size):
                x = x_all[order[start : start + config.batch_size]] * scale
                pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
                f = _topk(pre, config.k)
                recon = f @ params["W_dec"] + params["b_dec"]
                variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
                mse = (recon - x).pow(2).sum(-1).mean() / variance
                fired = (f > 0).any(0)
                since_fired = torch.where(fired, 0, since_fired + len(x))
                dead = since_fired > config.dead_tokens
                aux = _aux_loss(pre, dead, (x - recon).detach(), params["W_dec"], k_aux)
                optim.zero_grad(set_to_none=True)
                (mse + config.aux_coefficient * aux).backward()
                with torch.no_grad():
                    w, g = params["W_dec"], params["W_dec"].grad
                    g -= (g * w).sum(-1, keepdim=True) * w  # keep rows on the unit sphere
                optim.step()
                with torch.no_grad():
                    params["W_dec"].copy_(_unit_rows(params["W_dec"]))
                epoch_loss += float(mse.detach()) * len(x)
                steps += 1
                advance(1)
            losses.append(epoch_loss / n)
            log.info("epoch %d: FVU %.4f, %d dead", len(losses), losses[-1], int(dead.sum()))
    with torch.no_grad():
        # Fold the input scale back: the saved SAE reads raw activations.
        sae = SAE(
            "topk",
            params["W_enc"].detach() * scale,
            params["W_dec"].detach() / scale,
            params["b_enc"].detach().clone(),
            params["b_dec"].detach() / scale,
            hook_name,
            model_name,
            k=config.k,
            meta={"circuitlab": {"train": asdict(config), "n_tokens": n, "input_scale": scale}},
        )
    return TrainResult(sae, losses, time.perf_counter() - started, steps, n, mean)


def fit_sae(
    model: HookedModel,
    prompts: Sequence[str],
    layer: int,
    config: TrainConfig = TrainConfig(),
    *,
    hook: str = "hook_resid_pre",
    max_new_tokens: int = 48,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
) -> TrainResult:
    """Answer the prompts (cached), collect non-sink token activations (cached), train.

    Args:
        prompts: user messages; each is chat-formatted and followed by the model's answer.
        layer: the block whose ``hook`` is read (``blocks.{layer}.{hook}``).

    Returns:
        The :class:`TrainResult` (its SAE is named after ``model.resolved.location``).
    """
    name = f"blocks.{layer}.{hook}"
    if name not in model.bridge.hook_dict:
        raise ValueError(f"no hook {name!r} on this model ({model.n_layers} layers)")
    options = {"batch_size": batch_size, "cache_dir": cache_dir, "progress": progress}
    texts = with_answers(model, prompts, max_new_tokens=max_new_tokens, **options)
    acts = token_activations(model, texts, name, **options)
    return train_topk(
        acts, name, config, model_name=str(model.resolved.location), progress=progress
    )
