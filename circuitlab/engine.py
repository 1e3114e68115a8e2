"""HookedModel: a TransformerBridge over raw HF weights, with the operations circuitlab needs.

The bridge replaces the HF model's submodules in place, so the HF model's own ``forward``
fires TransformerLens hooks: every hook name is TL's. Generation, first-token log-probs and
teacher forcing go through the one decoder (:mod:`circuitlab.decoding`), which runs a plain
HF view of the same weights whenever no TL hook is attached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab import decoding, fastpath
from circuitlab.errors import ChatTemplateError, CircuitlabError
from circuitlab.models.facts import ModelFacts, read_facts
from circuitlab.models.loading import ModelSpec, ResolvedSource, input_device, load_hf
from circuitlab.progress import progress_bar

__all__ = ["HookedModel", "HookFn", "Positions"]

log = logging.getLogger(__name__)

HookFn = Callable[..., Tensor | None]
Positions = Literal["last", "post_instruction"] | int
StopFn = Callable[[list[str]], Sequence[bool]]


class HookedModel:
    """A causal LM whose forward passes and generations can be hooked by TL hook name.

    Build one with :meth:`load`. Prompts are plain user messages; they are chat-formatted
    with the model's template (or ``chat_template``) unless ``chat=False`` is passed.
    """

    def __init__(
        self,
        bridge,
        tokenizer,
        resolved: ResolvedSource,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict | None = None,
    ):
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.system_prompt = system_prompt
        # Extra template variables (Qwen3's enable_thinking) and text prefilled at the start
        # of the assistant's turn (a closed reasoning block): see circuitlab.evaluate.reasoning.
        self.chat_template_kwargs: dict = dict(chat_template_kwargs or {})
        self.response_prefix: str = ""
        if chat_template is not None:
            template_path = Path(chat_template)
            if len(chat_template) < 256 and template_path.is_file():
                chat_template = template_path.read_text()
            tokenizer.chat_template = chat_template
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Left padding puts every prompt's last token at position -1 of the batch.
        tokenizer.padding_side = "left"
        self.facts: ModelFacts = read_facts(self.hf_model, bool(tokenizer.chat_template))
        self._batch_cap: int | None = None  # lowered after an out-of-memory error
        self._measuring = False  # measure_batch_size wants the error, not the back-off
        self._writer_hooks = 0  # torch hooks of fastpath.module_hooks now attached
        self._plain: list = []  # the plain HF view, built on first use (None if impossible)

    @classmethod
    def load(
        cls,
        source: str | ModelSpec,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        progress: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> HookedModel:
        """Load a preset, folder, GGUF file or hub id and boot the bridge on its raw weights."""
        from transformer_lens.model_bridge import TransformerBridge

        spec = ModelSpec(source) if isinstance(source, str) else source
        model, tokenizer, resolved = load_hf(spec, progress=progress)
        device_map = getattr(model, "hf_device_map", None)
        mixed = _mixed_gpu_offload(device_map)
        if mixed:
            # TL 4.3 refuses GPU + CPU maps it has not verified; the dispatcher still places
            # every computation, and the export's parity check vouches for the result.
            log.warning("device map mixes GPU and CPU offload: %s", sorted(set(mixed)))
            del model.hf_device_map
        try:
            bridge = TransformerBridge.boot_transformers(
                resolved.location,
                hf_model=model,
                tokenizer=tokenizer,
                device=None if device_map else spec.torch_device,
                dtype=model.dtype,
            )
        finally:
            if mixed:
                model.hf_device_map = device_map
        bridge.eval()
        return cls(bridge, tokenizer, resolved, system_prompt, chat_template, chat_template_kwargs)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (a split model's first device).
        Hooks and readouts put their tensors on the device of the activation they meet."""
        return input_device(self.hf_model)

    @property
    def on_accelerator(self) -> bool:
        return (
            any(p.device.type not in ("cpu", "meta") for p in self.hf_model.parameters())
            or self.device.type != "cpu"
        )

    @property
    def n_layers(self) -> int:
        return self.facts.n_layers

    @property
    def plain(self):
        """The HF model without the bridge's hook points, on the same weights (SDPA
        attention; :func:`circuitlab.fastpath.plain_view`), or None where none is exact."""
        if not self._plain:
            self._plain.append(fastpath.plain_view(self.hf_model))
        return self._plain[0]

    # ----------------------------------------------------------------------------- hooks
    def hook_names(self) -> list[str]:
        return sorted(self.bridge.hook_dict)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str, HookFn]] = (),
        bwd_hooks: Sequence[tuple[str, HookFn]] = (),
    ) -> Iterator[HookedModel]:
        """Attach TL hooks for the duration of the block; nestable.

        Every name is checked before anything is attached, and the bridge removes what it
        attached in a ``finally``, so a failure halfway or an exception in the body leaves
        no hook behind. Hook functions follow TL: ``fn(tensor, hook) -> tensor | None``.
        """
        known = self.bridge.hook_dict
        unknown = [name for name, _ in [*fwd_hooks, *bwd_hooks] if name not in known]
        if unknown:
            raise CircuitlabError(f"unknown hook name(s) {unknown}; see HookedModel.hook_names()")
        with self.bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            yield self

    def n_active_hooks(self) -> int:
        """Hooks currently attached anywhere on the model (0 outside every ``hooks`` block):
        TL hooks and the decoder's writer-module edits."""
        return self.n_tl_hooks() + self._writer_hooks

    def n_tl_hooks(self) -> int:
        """TransformerLens hooks attached (they need the forward to run through the bridge)."""
        return sum(
            len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in set(self.bridge.hook_dict.values())
        )

    # ------------------------------------------------------------------------ formatting
    def format_chat(self, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
        """Wrap user messages in the chat template, ending with the assistant's turn."""
        if not self.tokenizer.chat_template:
            raise ChatTemplateError(
                f"{self.resolved.location} has no chat template; set chat_template in the "
                "config (a Jinja template or a file) or pass chat=False for raw text"
            )
        system = system_prompt if system_prompt is not None else self.system_prompt
        texts = []
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
            )
            texts.append(text + self.response_prefix)
        return texts

    def encode(self, prompts: Sequence[str], chat: bool = True) -> dict[str, Tensor]:
        """Left-padded token ids and attention mask for a batch of prompts."""
        if chat:
            # The template already carries BOS where the model wants one.
            batch = self.tokenizer(
                self.format_chat(prompts),
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
        else:
            batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        return {
            "input_ids": batch.input_ids.to(self.device),
            "attention_mask": batch.attention_mask.to(self.device),
        }

    def post_instruction_length(self) -> int:
        """Template tokens after the user text (ChatML: end tag, newline, assistant tag)."""
        marker = "\u2063circuitlab\u2063"
        text = self.format_chat([marker])[0]
        suffix = text[text.index(marker) + len(marker) :]
        return len(self.tokenizer(suffix, add_special_tokens=False).input_ids)

    def _n_positions(self, positions: Positions) -> int:
        if positions == "last":
            return 1
        if positions == "post_instruction":
            return self.post_instruction_length()
        if isinstance(positions, int) and positions >= 1:
            return positions
        raise ValueError(
            f"positions must be 'last', 'post_instruction' or an int >= 1, got {positions!r}"
        )

    def _batches(self, n: int, batch_size: int) -> list[range]:
        size = min(batch_size, self._batch_cap or batch_size)
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def _each(self, rows: range, fn: Callable[[range], None]) -> None:
        """``fn(rows)``; after an accelerator out-of-memory error, the two halves instead.

        The smaller size is remembered, so later batches start there rather than failing
        again.
        """
        try:
            fn(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1 or self._measuring:
                raise
            _free_accelerator_memory()
            half = len(rows) // 2
            self._batch_cap = half
            log.warning("out of memory at batch %d; retrying with %d", len(rows), half)
            self._each(range(rows.start, rows.start + half), fn)
            self._each(range(rows.start + half, rows.stop), fn)

    def measure_batch_size(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        default: int = 16,
        cap: int = 64,
        chat: bool = True,
    ) -> int:
        """The largest power of two up to ``cap`` that generates without running out of
        memory on the longest prompts; ``default`` on CPU, where memory is not the limit.
        """
        if not self.on_accelerator or not prompts:
            return default
        longest = sorted(prompts, key=len)[-1:]
        best, size = 0, 1
        self._measuring = True
        try:
            while size <= cap:
                try:
                    self.generate(longest * size, max_new_tokens, batch_size=size, chat=chat)
                except torch.OutOfMemoryError:
                    break
                finally:
                    _free_accelerator_memory()
                best, size = size, size * 2
        finally:
            self._measuring = False
        if best == 0:
            raise CircuitlabError("one prompt does not fit in the accelerator's memory")
        log.info("batch size %d (largest power of two <= %d that fits)", best, cap)
        return best

    # ----------------------------------------------------------------------- activations
    @torch.no_grad()
    def collect(
        self,
        prompts: Sequence[str],
        layers: Sequence[int] | None = None,
        positions: Positions = "last",
        hook: str = "hook_resid_pre",
        batch_size: int = 16,
        chat: bool = True,
        progress: bool = False,
    ) -> Float[Tensor, "prompt layer pos d_model"]:
        """Residual-stream activations at the last ``positions`` prompt tokens.

        Runs only the decoder (no unembedding: Gemma's 262k vocabulary would make full
        logits ~1.6 GB for 64 prompts) and stops after the last requested layer.

        Returns:
            float32 tensor on CPU, layers in the order given (default: all layers).
        """
        layers = list(range(self.n_layers)) if layers is None else list(layers)
        n_pos = self._n_positions(positions)
        out = torch.empty(len(prompts), len(layers), n_pos, self.facts.d_model)
        current = {"rows": range(0)}  # the batch being run, read by the hooks

        def make_read(slot: int) -> Callable[[Tensor], None]:
            def read(x: Tensor) -> None:
                rows = current["rows"]
                out[rows.start : rows.stop, slot] = x[:, -n_pos:, :].float().cpu()

            return read

        reads = [(f"blocks.{layer}.{hook}", make_read(i)) for i, layer in enumerate(layers)]
        with progress_bar(len(prompts), "collecting", progress) as advance:

            def run(rows: range) -> None:
                current["rows"] = rows
                batch = self.encode([prompts[i] for i in rows], chat=chat)
                decoding.run_until(self, batch, reads)
                advance(len(rows))

            for rows in self._batches(len(prompts), batch_size):
                self._each(rows, run)
        return out

    def next_token_logprobs(
        self, prompts: Sequence[str], batch_size: int = 16, chat: bool = True
    ) -> Float[Tensor, "prompt vocab"]:
        """Log-probabilities of the first generated token (float32, CPU)."""
        chunks = []

        def run(rows: range) -> None:
            texts = [prompts[i] for i in rows]
            chunks.append(decoding.next_token_logprobs(self, texts, len(rows), chat))

        for rows in self._batches(len(prompts), batch_size):
            self._each(rows, run)
        return torch.cat(chunks)

    # ------------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 48,
        batch_size: int = 16,
        stop: StopFn | None = None,
        stop_check_every: int = 4,
        chat: bool = True,
        progress: bool = False,
    ) -> list[str]:
        """Greedy completions, with KV cache, under whatever hooks are active.

        Args:
            stop: called with the completions so far of the rows still running, every
                ``stop_check_every`` tokens; a row for which it returns True stops (a judge
                that has already decided) and leaves the batch.

        Returns:
            The decoded completions (special tokens removed), in the order of ``prompts``.
        """
        return decoding.generate(
            self, prompts, max_new_tokens, batch_size, stop, stop_check_every, chat, progress
        )


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mixed_gpu_offload(device_map: dict | None) -> list[str]:
    """The CPU/disk targets of a map that also uses a GPU (empty if it does not mix)."""
    if not device_map:
        return []
    values = [str(v).lower() for v in device_map.values()]
    offload = [v for v in values if v in ("cpu", "disk")]
    gpu = any(v not in ("cpu", "disk", "meta") for v in values)
    return offload if gpu else []
