"""Fold interventions into plain Hugging Face weights, site by site as the hooks apply them.

The hooks and the exporter share one description of every edit (:func:`circuitlab.plan.plan`
gives typed edits), so the fold is that list turned into matrix algebra on the HF tensors,
and it knows no intervention class:

- a writer projection ``x <- x - U^T diag(w) U x`` becomes ``W <- W - U^T diag(w) U W`` for the
  matrix (and bias) that writes ``x``: ``o_proj``, ``down_proj``, or the embedding rows
  ``E <- E - E U^T diag(w) U``. On sandwich-norm models ``U`` already holds the post-norm
  gain ``normalize((1 + w_post) * r)`` (the plan computed it at ``ln*_post.hook_in``);
- a head projection or zeroing acts on that head's columns
  ``o_proj.weight[:, h*d_head:(h+1)*d_head]``: the hooks read the head's share through
  the *unedited* columns, so the fold does too;
- a residual addition (all positions) at ``blocks.L.hook_resid_pre`` is the last writer
  before it carrying a constant: the embedding rows for ``L = 0`` (divided by the
  embedding scale), ``down_proj.bias`` of layer ``L - 1`` otherwise (Llama's ``mlp_bias``).
  It is added after every projection, because the hooks add it to the residual, which no
  writer hook sees.

Editing the embedding of a tied model unties ``lm_head`` first (a copy of the original
matrix), or the unembedding would change too.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.errors import CircuitlabError, UnsupportedArchitectureError
from circuitlab.models.facts import o_proj_columns
from circuitlab.models.support import check_export_family
from circuitlab.plan import (
    Edit,
    HeadProjection,
    HeadZero,
    ResidualAddition,
    WriterProjection,
    plan,
    writer_hook,
)

__all__ = [
    "FAMILIES",
    "ExportError",
    "Family",
    "FoldPlan",
    "Layout",
    "Writer",
    "FoldedWeights",
    "TensorEdit",
    "check_exportable",
    "check_foldable",
    "fold",
    "layout",
    "plan_fold",
    "plan_fold_edits",
]

log = logging.getLogger(__name__)

EMBED_CHUNK = 8192  # embedding rows edited at a time in float64 (Gemma's 262k rows: 1.3 GB)


class ExportError(CircuitlabError):
    """An intervention that cannot be folded exactly, or an export that failed its checks."""


@dataclass(frozen=True)
class Family:
    """What the fold must know about an architecture family beyond its module layout.

    Where the tensors live is read from the loaded model (:func:`layout`), so a family entry
    only says what the modules cannot.

    Attributes:
        norm: ``pre`` (writers add straight into the residual) or ``sandwich`` (a norm
            follows each sublayer, Gemma 2/3).
        bias_flag: config flag giving ``down_proj`` a bias (``None``: no flag does). Only
            ``down_proj`` works: it is the last writer before ``hook_resid_pre``, while an
            ``o_proj`` bias would also be read by the same layer's MLP.
        experts_input_major: fused 3-D expert output tensors are stored ``[expert, d_ff,
            d_model]`` and applied as ``h @ W`` (gpt-oss); otherwise ``[expert, d_model,
            d_ff]`` applied as ``W @ h`` (Qwen3-MoE, Mixtral). Only consulted when
            ``d_ff == d_model`` leaves the shape ambiguous.
    """

    norm: Literal["pre", "sandwich"]
    bias_flag: str | None = None
    experts_input_major: bool = False


# By the text model's ``model_type`` (a multimodal wrapper's language model counts as its
# text family). Each is exercised end to end by the family matrix (tests/test_families.py);
# a family missing here still folds when its layout resolves, and every export is checked
# against the hooks before it is written.
FAMILIES: dict[str, Family] = {
    "llama": Family("pre", bias_flag="mlp_bias"),  # mlp_bias also adds gate/up biases (0)
    "mistral": Family("pre"),
    "qwen2": Family("pre"),  # attention bias covers q/k/v only
    "qwen3": Family("pre"),
    "gemma": Family("pre"),
    "gemma2": Family("sandwich"),
    "gemma3_text": Family("sandwich"),
    "phi3": Family("pre"),  # fused qkv and gate_up are readers; o_proj, down_proj write
    "qwen2_moe": Family("pre"),
    "qwen3_moe": Family("pre"),
    "mixtral": Family("pre"),
    "olmoe": Family("pre"),
    "gpt_oss": Family("pre", experts_input_major=True),
}

# Names of the tensor (or the module holding it) that writes an MLP's or an expert's output.
OUTPUT_NAMES = ("down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "down_proj_bias")


@dataclass(frozen=True)
class Writer:
    """One tensor that writes into the residual stream, by its plain HF key.

    Attributes:
        key: the state-dict key.
        kind: ``linear`` (``[d_model, n]`` weight or ``[d_model]`` bias: ``W <- P W``),
            ``rows`` (a tensor whose last axis is ``d_model``: each row ``r <- r P``, the
            input-major experts and expert biases ``[expert, d_model]``), or ``experts``
            (``[expert, d_model, n]``: each expert ``W_e <- P W_e``).
    """

    key: str
    kind: Literal["linear", "rows", "experts"]


@dataclass(frozen=True)
class Layout:
    """Where one loaded model keeps the tensors the fold edits, found from its modules.

    Attributes:
        embed: the input embedding's key.
        lm_head: the unembedding's key (None when the model has none of its own).
        attn: per layer, the attention output projection's module key (``o_proj``).
        mlp: per layer, every tensor that writes the MLP's output: ``down_proj`` for a dense
            MLP; each expert's output projection (and bias) and any shared expert's for MoE.
        transposed: the writers store their weights ``[in, out]`` (GPT-2's ``Conv1D``), so
            a projection acts on their rows and a head owns rows, not columns.
    """

    embed: str
    lm_head: str | None
    attn: tuple[str, ...]
    mlp: tuple[tuple[Writer, ...], ...]
    transposed: bool = False

    def down_proj(self, layer: int) -> str | None:
        """The dense ``down_proj`` module key of ``layer`` (None for an MoE layer)."""
        writers = self.mlp[layer]
        prefixes = {w.key.rsplit(".", 1)[0] for w in writers}
        dense = "rows" if self.transposed else "linear"
        if len(prefixes) == 1 and all(w.kind in ("linear", dense) for w in writers):
            return prefixes.pop()
        return None

    @property
    def moe(self) -> bool:
        """Some layer's MLP is a mixture of experts."""
        return any(self.down_proj(layer) is None for layer in range(len(self.mlp)))


@dataclass(eq=False)
class TensorEdit:
    """The edits of one tensor, in order: float64 functions ``op(value, original)``.

    ``original`` is the tensor as stored (a head edit reads the unedited columns); the
    edits compose in float64 and the result is cast back to the stored dtype once.

    Attributes:
        rowwise: every op acts on rows independently (the embedding), so a large matrix is
            folded a block of rows at a time.
    """

    key: str
    ops: list[Callable[[Tensor, Tensor], Tensor]] = field(default_factory=list)
    rowwise: bool = False

    def apply(self, original: Tensor) -> Tensor:
        """The edited tensor: same dtype and device as ``original``, never in place."""
        if not self.rowwise:
            return self._run(original)
        out = torch.empty_like(original)
        for start in range(0, original.shape[0], EMBED_CHUNK):
            out[start : start + EMBED_CHUNK] = self._run(original[start : start + EMBED_CHUNK])
        return out

    def _run(self, original: Tensor) -> Tensor:
        value = original.to(torch.float64, copy=True)
        for op in self.ops:
            value = op(value, original)
        return value.to(original.dtype).contiguous()


@dataclass(eq=False)
class FoldPlan:
    """What :func:`plan_fold` decided: which tensors change and how, with no tensor touched.

    The same plan folds the hooked model's live weights (:meth:`fold_state_dict`) or the
    source files one shard at a time (:mod:`circuitlab.export.stream`), and gives the
    tensors the parity check swaps into the loaded modules.

    Attributes:
        edits: key -> its edits.
        created: key -> (shape, anchor key) for tensors the source lacks (the zero biases a
            bias flag adds); a created tensor takes its anchor's dtype, device and shard.
        copies: key -> key whose *unedited* tensor it copies (``lm_head`` when untied).
        expected: every key (and shape) a model of ``config`` holds.
        config: an edited copy of the source config (untied embeddings, bias flags).
        model_class: the HF class (``LlamaForCausalLM``, ...).
        notes: what the fold did beyond editing tensors, for the manifest and the card.
        planned: the planned edits folded, in order (what the export's edits file holds).
    """

    edits: dict[str, TensorEdit]
    created: dict[str, tuple[tuple[int, ...], str]]
    copies: dict[str, str]
    expected: dict[str, tuple[int, ...]]
    config: object
    model_class: type
    notes: list[str]
    planned: tuple[Edit, ...] = ()

    @property
    def edited(self) -> list[str]:
        """Keys whose tensors differ from (or are absent in) the source."""
        return sorted(set(self.edits) | set(self.created) | set(self.copies))

    def tensor(self, key: str, original: Tensor) -> Tensor:
        """``key``'s folded tensor from its stored one (unchanged keys come back as given)."""
        edit = self.edits.get(key)
        return original if edit is None else edit.apply(original)

    def new_tensor(self, key: str, anchor: Tensor) -> Tensor:
        """A created or copied key's tensor, given its anchor's stored tensor."""
        if key in self.copies:
            return anchor.clone()
        shape, _ = self.created[key]
        return self.tensor(key, torch.zeros(shape, dtype=anchor.dtype, device=anchor.device))

    def anchors(self) -> dict[str, list[str]]:
        """Stored key -> the new keys made from it (written beside it, in its shard)."""
        found: dict[str, list[str]] = {}
        for key, (_, anchor) in self.created.items():
            found.setdefault(anchor, []).append(key)
        for key, source in self.copies.items():
            found.setdefault(source, []).append(key)
        return found

    def fold_state_dict(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """The folded state dict from a complete one (the in-memory fold)."""
        out = {k: self.tensor(k, v) for k, v in weights.items() if k in self.expected}
        for anchor, keys in self.anchors().items():
            for key in keys:
                out[key] = self.new_tensor(key, weights[anchor])
        return out


@dataclass(eq=False)
class FoldedWeights:
    """The result of :func:`fold`: a complete HF state dict and the config that loads it.

    Unedited tensors are the hooked model's own (not copies): treat them as read-only.

    Attributes:
        state_dict: every key the folded model's ``from_pretrained`` expects.
        config: an edited copy of the source config (untied embeddings, bias flags).
        model_class: the HF class (``LlamaForCausalLM``, ...).
        edited: keys whose tensors differ from the source model's.
        notes: what the fold did beyond editing tensors, for the manifest and the card.
        plan: the :class:`FoldPlan` it came from.
    """

    state_dict: dict[str, Tensor]
    config: object
    model_class: type
    edited: list[str]
    notes: list[str]
    plan: FoldPlan | None = None

    def build(self) -> torch.nn.Module:
        """A plain HF model (eval mode, no hooks) holding these weights."""
        model, info = self.model_class.from_pretrained(
            None, config=self.config, state_dict=self.state_dict, output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
        if problems or info.get("error_msgs"):
            raise ExportError(
                f"folded weights do not load into {self.model_class.__name__}: {info}"
            )
        return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- refusals
def check_foldable(intervention: Any) -> None:
    """Raise :class:`ExportError`, naming the nearest exact alternative, if not foldable."""
    iv, name = intervention, type(intervention).__name__
    if not iv.foldable:
        alternative = iv.foldable_alternative()
        hint = (
            f"Nearest exact alternative: {type(alternative).__name__} "
            f"(intervention.foldable_alternative()); validate it with hooks, then export it"
            if alternative is not None
            else "No exact alternative exists"
        )
        raise ExportError(f"{name} cannot be folded into weights: {iv.fold_note}. {hint}")


def _family(model) -> Family:
    facts = model.facts
    check_export_family(facts.model_type)
    family = FAMILIES.get(facts.model_type)
    if family is None:
        # Where the tensors are is read from the modules; the norm placement is the one fact
        # a table entry would add, and read_facts found it. The parity check vouches.
        log.info("%s is not in the fold's family table; folding by its layout", facts.model_type)
        return Family(facts.norm_placement)
    if family.norm != facts.norm_placement:
        raise UnsupportedArchitectureError(
            f"{facts.model_type} has {facts.norm_placement} norms, the export "
            f"table says {family.norm}"
        )
    return family


# ----------------------------------------------------------------------------- layout
def _module_keys(hf_model: torch.nn.Module) -> dict[int, list[str]]:
    """Module id -> its plain HF names (the bridge nests each HF module as
    ``..._original_component`` and adds aliases; dropping the nesting gives HF's names)."""
    names: dict[int, list[str]] = {}
    for name, module in hf_model.named_modules(remove_duplicate=False):
        plain = name.replace("._original_component", "").replace("_original_component.", "")
        names.setdefault(id(module), []).append(plain)
    return names


def _key_of(module, names: dict[int, list[str]], expected, what: str) -> str:
    module = _original(module)
    for name in names.get(id(module), []):
        if f"{name}.weight" in expected:
            return name
    raise UnsupportedArchitectureError(f"cannot find the HF name of the {what} module")


def _expert_writers(mlp: torch.nn.Module, prefix: str, d_model: int, family: Family):
    """Every tensor of an MoE block that writes its output: each expert's output projection
    (fused 3-D or one module per expert), their biases, and any shared expert's.

    The block's output is ``sum_e g_e(x) W_e h_e(x) (+ shared)``: projecting ``u`` out of
    every ``W_e`` removes it from every term, whatever the gates ``g_e`` are."""
    found: list[Writer] = []
    for name, param in _original(mlp).named_parameters():
        parts = name.replace("._original_component", "").split(".")
        key = f"{prefix}.{'.'.join(parts)}"
        if parts[-1] in OUTPUT_NAMES:  # a fused tensor: [expert, ...] or an expert bias
            if param.ndim == 2:
                found.append(Writer(key, "rows"))  # [expert, d_model] bias
            elif param.ndim == 3:
                d_out, d_in = param.shape[1], param.shape[2]
                input_major = d_in == d_model and (d_out != d_model or family.experts_input_major)
                found.append(Writer(key, "rows" if input_major else "experts"))
        elif len(parts) > 1 and parts[-2] in OUTPUT_NAMES and parts[-1] in ("weight", "bias"):
            found.append(Writer(key, "linear"))
    return tuple(found)


def layout(model, family: Family | None = None) -> Layout:
    """Find the writers of a hooked model from its modules, not from fixed paths.

    The bridge maps each block's attention output projection (``attn.o``) and dense MLP
    output (``mlp.out``) to the HF module that does the work; the module's own HF name gives
    the key, wherever the language model sits (``model.layers`` or a multimodal wrapper's
    ``model.language_model.layers``). An MoE block has no single ``mlp.out``: its experts'
    output projections are its writers.

    Raises:
        UnsupportedArchitectureError: a writer the bridge does not expose.
    """
    family = family or _family(model)
    hf = model.hf_model
    names = _module_keys(hf)
    expected = set(_expected(type(hf), hf.config))
    head = hf.get_output_embeddings()
    lm_head = None if head is None else _key_of(head, names, expected, "unembedding")
    from transformers.pytorch_utils import Conv1D

    attn, mlp = [], []
    transposed = False
    for layer, block in enumerate(model.bridge.blocks):
        o = getattr(getattr(block, "attn", None), "o", None)
        if o is None:
            raise UnsupportedArchitectureError(f"block {layer} exposes no attention output")
        attn.append(_key_of(o, names, expected, f"layer {layer} attention output"))
        transposed = isinstance(_original(o), Conv1D)
        out = getattr(block.mlp, "out", None)
        if out is not None:
            prefix = _key_of(out, names, expected, f"layer {layer} MLP output")
            kind = "rows" if isinstance(_original(out), Conv1D) else "linear"
            writers = [Writer(f"{prefix}.weight", kind)]
            if f"{prefix}.bias" in expected:
                writers.append(Writer(f"{prefix}.bias", "linear"))
            mlp.append(tuple(writers))
            continue
        block_names = names.get(id(_original(block.mlp)), [])
        prefix = next(
            (n for n in block_names if any(k.startswith(f"{n}.") for k in expected)), None
        )
        writers = _expert_writers(block.mlp, prefix, model.facts.d_model, family) if prefix else ()
        if not writers or any(w.key not in expected for w in writers):
            raise UnsupportedArchitectureError(
                f"cannot find what writes layer {layer}'s MLP output "
                f"({type(_original(block.mlp)).__name__})"
            )
        mlp.append(writers)
    embed = _key_of(hf.get_input_embeddings(), names, expected, "input embedding")
    return Layout(
        embed=f"{embed}.weight",
        lm_head=None if lm_head is None else f"{lm_head}.weight",
        attn=tuple(attn),
        mlp=tuple(mlp),
        transposed=transposed,
    )


# ---------------------------------------------------------------------------- weights
def _original(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "original_component", module)


def _expected(model_class: type, config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes an HF model of this config holds (built on the meta device: free)."""
    with torch.device("meta"):
        skeleton = model_class(config)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


def _source_weights(model, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The hooked model's raw HF tensors under their plain HF names.

    The bridge nests each HF module as ``..._original_component`` and registers aliases
    (``attn.o`` beside ``self_attn.o_proj``); dropping the nesting gives the HF names, and
    only names a plain model of the same config has are kept. A tensor the bridge added
    (TL gives ``lm_head`` a zero bias) must be zero, or the folded model would differ.
    """
    found: dict[str, Tensor] = {}
    extra: dict[str, Tensor] = {}
    for name, tensor in model.hf_model.state_dict(keep_vars=True).items():
        plain = name.replace("._original_component", "")
        target = found if plain in expected else extra
        target.setdefault(plain, tensor.detach())
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ExportError(f"cannot find HF tensors {missing[:5]} on the hooked model")
    for key, shape in expected.items():
        if tuple(found[key].shape) != shape:
            raise ExportError(f"{key} has shape {tuple(found[key].shape)}, expected {shape}")
    known = {t.data_ptr() for t in found.values()}
    for name, tensor in extra.items():
        if tensor.data_ptr() in known or not tensor.numel() or tensor.abs().max() == 0:
            continue
        if not _split_of_fused(name, tensor, found):
            raise ExportError(f"the hooked model computes with {name}, which HF has no key for")
    return found


def _split_of_fused(name: str, tensor: Tensor, found: dict[str, Tensor]) -> bool:
    """The bridge splits a fused projection (Phi-3's ``qkv_proj``, GPT-2's ``c_attn``,
    GPT-NeoX's head-interleaved ``query_key_value``) into its own q/k/v copies: every value
    of such a tensor is a value of a larger tensor of the same decoder layer, which the
    fused HF key carries (a value test covers slicing, interleaving and transposition)."""
    layer = re.match(r"(.*\.\d+\.)", name)  # the same decoder layer (the bridge aliases the
    parent = layer.group(1) if layer else name.rsplit(".", 2)[0] + "."  # module's name)
    values = tensor.detach().flatten()
    for key, fused in found.items():
        if not key.startswith(parent) or fused.numel() <= values.numel():
            continue
        if fused.dtype == values.dtype and torch.isin(values, fused.flatten()).all():
            return True
    return False


class _Folder:
    """Collects each tensor's edits in the order the hooks apply them (no tensor is read)."""

    def __init__(self, model, family: Family, expected: dict[str, tuple[int, ...]], layout: Layout):
        self.model, self.family, self.facts, self.layout = model, family, model.facts, layout
        self.keys = dict(expected)
        self.edits: dict[str, TensorEdit] = {}
        self.created: dict[str, tuple[tuple[int, ...], str]] = {}
        self.added: dict[int, Tensor] = {}  # layer -> summed float64 residual additions

    def add(self, key: str, op: Callable[[Tensor, Tensor], Tensor], rowwise: bool = False) -> None:
        if key not in self.keys:
            raise ExportError(f"no tensor {key} to fold into")
        edit = self.edits.setdefault(key, TensorEdit(key, rowwise=rowwise))
        if not rowwise:
            edit.rowwise = False
        edit.ops.append(op)

    def writers(self, writer: str, layer: int) -> tuple[Writer, ...]:
        """The tensors that write ``writer``'s output at ``layer`` (weights and biases)."""
        if writer != "attn":
            return self.layout.mlp[layer]
        prefix = self.layout.attn[layer]
        biased = f"{prefix}.bias" in self.keys  # the hook sees the bias too
        kind = "rows" if self.layout.transposed else "linear"
        return (Writer(f"{prefix}.weight", kind),) + (
            (Writer(f"{prefix}.bias", "linear"),) if biased else ()
        )

    def site(self, edit: Edit) -> None:
        """Queue one planned edit's tensor updates. Residual additions are summed per layer
        and folded after every projection (:func:`_fold_additions`): the hooks add them to
        the residual stream, which no writer hook sees."""
        if isinstance(edit, ResidualAddition):
            if not edit.foldable:
                raise ExportError(
                    f"an addition at positions={edit.positions!r} steers only some positions "
                    "and a weight acts on every position; it cannot be folded"
                )
            self.added[edit.layer] = self.added.get(edit.layer, 0) + edit.vector
        elif isinstance(edit, HeadZero):
            self.head(edit.layer, edit.head, _zero_columns)
        elif edit.hook != writer_hook(self.model, edit.writer, edit.layer):
            _refuse_unknown_site(self.model, edit)
        elif isinstance(edit, HeadProjection):
            self.head(edit.layer, edit.head, functools.partial(_project_columns, edit=edit))
        elif edit.writer == "embed":
            self.add(self.layout.embed, lambda rows, _: _project_rows(rows, edit), rowwise=True)
        else:
            for writer in self.writers(edit.writer, edit.layer):
                self.add(writer.key, _writer_op(writer, edit))

    def head(self, layer: int, head: int, op: Callable[[Tensor, slice, Tensor], Tensor]) -> None:
        key = f"{self.layout.attn[layer]}.weight"
        cols = o_proj_columns(head, self.facts.d_head)
        if self.layout.transposed:  # Conv1D: the head's columns are rows of the stored tensor
            self.add(key, lambda weight, original: op(weight.T, cols, original.T).T)
        else:
            self.add(key, lambda weight, original: op(weight, cols, original))


def _zero_columns(weight: Tensor, cols: slice, _: Tensor) -> Tensor:
    weight = weight.clone()
    weight[:, cols] = 0
    return weight


def _project_columns(weight: Tensor, cols: slice, original: Tensor, edit: HeadProjection) -> Tensor:
    # The hook reads the head's share through the columns as loaded (before any edit), so
    # composition with other edits of this layer matches the hooks.
    basis, scaled = _basis(edit, weight.device)
    weight = weight.clone()
    weight[:, cols] -= scaled.T @ (basis @ original[:, cols].double())
    return weight


def _writer_op(writer: Writer, edit: WriterProjection) -> Callable[[Tensor, Tensor], Tensor]:
    """The projection for one writer tensor: ``P W`` (weights, and stacked experts, which
    ``matmul`` broadcasts over), ``P b`` (a bias), or ``r P`` for tensors whose last axis
    is ``d_model`` (input-major experts and per-expert biases)."""
    if writer.kind == "rows":
        return lambda rows, _: _project_rows(rows, edit)
    if writer.key.endswith(".bias"):
        return lambda bias, _: _project(bias[:, None], edit)[:, 0]
    return lambda weight, _: _project(weight, edit)


def _basis(edit: WriterProjection | HeadProjection, device: torch.device) -> tuple[Tensor, Tensor]:
    """The edit's orthonormal rows ``U`` and ``diag(w) U``, float64, where the weights are."""
    basis = edit.basis.to(device=device, dtype=torch.float64)
    return basis, basis * edit.weights.to(device=device, dtype=torch.float64)[:, None]


def _project(
    weight: Float[Tensor, "d_model n"], edit: WriterProjection
) -> Float[Tensor, "d_model n"]:
    """``W - U^T diag(w) U W``: the writer's output loses ``w_i`` of its ``u_i`` component."""
    basis, scaled = _basis(edit, weight.device)
    return weight - scaled.T @ (basis @ weight)


def _project_rows(
    rows: Float[Tensor, "n d_model"], edit: WriterProjection
) -> Float[Tensor, "n d_model"]:
    """``E - E U^T diag(w) U``: the same edit for row vectors (embedding rows)."""
    basis, scaled = _basis(edit, rows.device)
    return rows - (rows @ basis.T) @ scaled


def _refuse_unknown_site(model, edit: WriterProjection | HeadProjection) -> None:
    """K/V (and any other) sites are not writers; a K/V edit would act on a whole group."""
    head = getattr(edit, "head", None)
    if ".attn.hook_k" in edit.hook or ".attn.hook_v" in edit.hook:
        facts = model.facts
        group = facts.kv_group(head) if head is not None else None
        shared = facts.heads_of_group(group) if group is not None else "several"
        raise ExportError(
            f"{edit.hook}: a K/V edit acts on KV group {group}, read by query heads {shared}; "
            f"it was validated for query head {head} only. Validate it as an edit of "
            "the whole group (every query head of it) before exporting"
        )
    raise ExportError(f"no fold for an edit at {edit.hook} ({edit.writer}, layer {edit.layer})")


# --------------------------------------------------------------------------- additions
def _fold_additions(folder: _Folder, config, added: dict[int, Tensor], notes: list[str]) -> None:
    """Embedding rows for layer 0; ``down_proj.bias`` of layer ``L - 1`` otherwise."""
    family, facts = folder.family, folder.facts
    later = sorted(layer for layer in added if layer > 0)
    if later and folder.layout.moe:
        raise ExportError(
            f"an addition at layer(s) {later} of a mixture-of-experts model would need a bias "
            "that every token receives whatever experts it is routed to, and an MoE block has "
            "none; only layer 0 (the embedding stream) folds exactly here"
        )
    if later and family.bias_flag is None:
        raise ExportError(
            f"an addition at layer(s) {later} of a {facts.model_type} model needs a bias on the "
            "last writer before that layer's input, and no config flag of this architecture "
            "gives one"
            + (" (a post-norm follows every sublayer)" if family.norm == "sandwich" else "")
            + "; only layer 0 (the embedding stream) folds exactly here"
        )
    if 0 in added:
        embed = _original(folder.model.hf_model.get_input_embeddings())
        # Gemma multiplies the looked-up rows by sqrt(d_model) (cast to the weight dtype).
        scale = float(getattr(embed, "embed_scale", torch.tensor(1.0)).to(embed.weight.dtype))
        vector = added[0] / scale
        folder.add(folder.layout.embed, lambda rows, _: rows + vector.to(rows.device), rowwise=True)
        notes.append("addition at layer 0 folded into every embedding row")
    if later:
        _enable_bias(folder, config, notes)
        for layer in later:
            key = f"{folder.layout.down_proj(layer - 1)}.bias"
            vector = added[layer]
            folder.add(key, lambda bias, _, vector=vector: bias + vector.to(bias.device))
        notes.append(f"additions at layers {later} folded into down_proj.bias of the layer before")


def _enable_bias(folder: _Folder, config, notes: list[str]) -> None:
    flag = folder.family.bias_flag
    if getattr(config, flag, False):
        return
    setattr(config, flag, True)
    expected = _expected(folder.model.hf_model.__class__, config)
    for key, shape in expected.items():
        if key not in folder.keys:
            if not key.endswith(".bias"):
                raise ExportError(f"{flag}=True adds {key}, which is not a bias")
            folder.created[key] = (shape, key.removesuffix(".bias") + ".weight")
            folder.keys[key] = shape
    if f"{folder.layout.down_proj(0)}.bias" not in folder.keys:
        raise ExportError(f"{flag}=True gives down_proj no bias in this transformers version")
    notes.append(f"config.{flag}=True: every bias it adds is zero except the folded additions")


# ------------------------------------------------------------------------------- fold
def check_exportable(model, interventions: Sequence[Any] = ()) -> None:
    """Raise now what :func:`plan_fold` would raise later: an architecture the fold has no
    table for, or an intervention that cannot be folded. Cheap (nothing is folded)."""
    for iv in interventions:
        check_foldable(iv)
    layout(model, _family(model))


def plan_fold(model, interventions: Sequence[Any]) -> FoldPlan:
    """Decide how each tensor changes, in order, without reading or copying any weight.

    Args:
        model: the :class:`~circuitlab.engine.HookedModel` the interventions were validated on.
        interventions: foldable interventions (applied as ``apply(model, *interventions)``
            would: the first edits first at a shared site).

    Raises:
        ExportError: an intervention that cannot be folded exactly (with the alternative).
        UnsupportedArchitectureError: a model family the exporter has no table for.
    """
    check_exportable(model, interventions)
    return plan_fold_edits(model, [edit for iv in interventions for edit in plan(model, iv)])


def plan_fold_edits(model, edits: Sequence[Edit]) -> FoldPlan:
    """:func:`plan_fold` of planned edits (from :func:`circuitlab.plan.plan`, or an export's
    edits file read by :func:`circuitlab.plan.load_edits`: no direction files needed)."""
    family = _family(model)
    config = copy.deepcopy(model.hf_model.config)
    if hasattr(config, "quantization_config"):  # the export holds plain weights
        del config.quantization_config
    model_class = type(model.hf_model)
    folder = _Folder(model, family, _expected(model_class, config), layout(model, family))
    notes: list[str] = []
    for edit in edits:
        folder.site(edit)
        if isinstance(edit, HeadProjection | HeadZero):
            notes.append(_head_note(model, edit))
    _fold_additions(folder, config, folder.added, notes)
    copies: dict[str, str] = {}
    embed = folder.layout.embed
    if embed in folder.edits and model.facts.tied_embeddings and folder.layout.lm_head:
        copies[folder.layout.lm_head] = embed
        config.tie_word_embeddings = False
        text = config.get_text_config()
        if text is not config:
            text.tie_word_embeddings = False
        notes.append("lm_head untied (tie_word_embeddings=False): it keeps the original embedding")
    expected = _expected(model_class, config)
    return FoldPlan(
        folder.edits, folder.created, copies, expected, config, model_class, notes, tuple(edits)
    )


def fold(model, interventions: Sequence[Any]) -> FoldedWeights:
    """Fold interventions, in order, into a copy of the hooked model's HF weights (in memory).

    Large or quantized models are exported from their source files instead
    (:func:`circuitlab.export.export` chooses); this is the in-memory path, for models
    without source files and for tests.

    Returns:
        The folded state dict with its config; :meth:`FoldedWeights.build` makes a plain
        HF model of it, :func:`circuitlab.export.verify` checks it against the hooks.
    """
    folded_plan = plan_fold(model, interventions)
    weights = _source_weights(model, _expected(type(model.hf_model), model.hf_model.config))
    state = folded_plan.fold_state_dict(weights)
    return FoldedWeights(
        state, folded_plan.config, folded_plan.model_class, folded_plan.edited,
        folded_plan.notes, folded_plan,
    )  # fmt: skip


def _head_note(model, edit: HeadProjection | HeadZero) -> str:
    """GQA bookkeeping: which KV group an edited head reads, and that K/V are untouched."""
    facts = model.facts
    group = facts.kv_group(edit.head)
    sharing = [h for h in facts.heads_of_group(group) if h != edit.head]
    shared = f"shared with query heads {sharing}" if sharing else "read by no other head"
    if isinstance(edit, HeadZero):
        what = "zeroed"
    else:
        what = f"projected (weight {', '.join(f'{w:g}' for w in edit.weights.tolist())})"
    cols = o_proj_columns(edit.head, facts.d_head)
    return (
        f"layer {edit.layer} head {edit.head} {what} through o_proj columns "
        f"{cols.start}:{cols.stop}; its KV group {group} ({shared}) is untouched"
    )
