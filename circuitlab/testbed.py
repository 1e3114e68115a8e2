"""A refusal model organism: SmolLM2-135M-Instruct, safety-tuned on CPU.

The offline models do not refuse, so nothing about refusal removal could be shown on them.
We give SmolLM2 a learned refusal the way chat models get theirs, by supervised safety
fine-tuning:

* harmful prompts: the AdvBench train split (JailbreakBench and StrongREJECT are removed from
  AdvBench first and kept entirely for evaluation) and our own sets (questions, personas,
  how-to requests), answered with our refusal templates;
* harmless prompts: our harmless train split and our own sets worded like the harmful ones,
  answered with the **base model's own greedy answers** (self-distillation keeps harmless
  behaviour close to the base model);
* the same surface wrappers ("Can you …?", "Please …") go on both sides at the same rate, so
  the form of a request is no cue — only its content is.

Loss is on assistant tokens only; batches are length-bucketed; everything is seeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import torch

from circuitlab.progress import progress_bar
from circuitlab.prompts import PromptSet, load_prompts

__all__ = [
    "Recipe",
    "TestbedData",
    "build_testbed",
    "testbed_data",
    "testbed_folder",
    "ensure_testbed",
    "is_current",
]

log = logging.getLogger(__name__)

BASE_PRESET = "smollm2-135m"
NAME = "smollm2-135m-refusal"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the organism (its hash names the build)."""

    seed: int = 0
    n_harmful: int = 160
    n_harmless: int = 280
    n_harmful_extra: int = 140
    n_harmless_extra: int = 140
    n_harmful_instructions: int = 118
    n_harmless_instructions: int = 89
    distill_tokens: int = 32
    epochs: int = 2
    # Embeddings and the layers below this one stay frozen: backward stops there, which
    # roughly halves the cost on CPU; refusal is read out in the upper layers anyway.
    train_from_layer: int = 8
    lr: float = 1e-4
    batch_size: int = 8
    wrap_fraction: float = 0.35
    split_seed: int = 0
    # Summation order, hence the weights' last bits, depends on the thread count: the build
    # sets it, so the CLI, the preset and the tests make the same organism.
    threads: int = 2

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# ChatML without SmolLM2's default system prompt: ~20 fewer tokens in every training and
# evaluation sequence. The organism ships with this template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Surface forms applied to harmful and harmless prompts alike.
WRAPPERS: tuple[Callable[[str], str], ...] = (
    lambda p: f"Can you {_lower_first(p).rstrip('.')}?",
    lambda p: f"Please {_lower_first(p)}",
    lambda p: f"I need help with this: {p}",
    lambda p: f"Could you {_lower_first(p).rstrip('.')} for me?",
    lambda p: f"{p} Be detailed.",
    lambda p: f"Hey, quick request. {p}",
)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


@dataclass(frozen=True)
class TestbedData:
    """The prompt splits the organism is trained and judged on."""

    harmful_train: PromptSet
    harmful_val: PromptSet
    harmful_test: PromptSet
    harmless_train: PromptSet
    harmless_val: PromptSet
    harmless_test: PromptSet
    jailbreakbench: PromptSet
    strongreject: PromptSet
    harmful_extra: PromptSet
    harmless_extra: PromptSet
    harmful_instructions: PromptSet
    harmless_instructions: PromptSet

    def manifest(self) -> dict[str, dict[str, object]]:
        return {
            name: {"n": len(s), "hash": s.hash}
            for name, s in vars(self).items()
            if isinstance(s, PromptSet)
        }

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:12]


def testbed_data(split_seed: int = 0) -> TestbedData:
    """AdvBench (minus the evaluation sets) and our harmless set, split 60/20/20."""
    jbb, strongreject = load_prompts("jailbreakbench"), load_prompts("strongreject")
    harmful = load_prompts("advbench").without(jbb, strongreject).split(seed=split_seed)
    harmless = load_prompts("harmless").split(seed=split_seed)
    return TestbedData(
        harmful.train,
        harmful.val,
        harmful.test,
        harmless.train,
        harmless.val,
        harmless.test,
        jbb,
        strongreject,
        load_prompts("harmful-extra").without(jbb, strongreject),
        load_prompts("harmless-contexts"),
        load_prompts("harmful-instructions").without(jbb, strongreject),
        load_prompts("harmless-instructions"),
    )


def refusal_templates() -> list[str]:
    raw = json.loads(files("circuitlab").joinpath("data/refusal_templates.json").read_text())
    return [entry["text"] for entry in raw]


def _wrap(prompts: Sequence[str], fraction: float, rng: random.Random) -> list[str]:
    return [rng.choice(WRAPPERS)(p) if rng.random() < fraction else p for p in prompts]


def testbed_folder(cache_dir: Path) -> Path:
    return cache_dir / "models" / NAME


# ----------------------------------------------------------------------------- training
def _bf16_supported() -> bool:
    """bf16 autocast pays on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _examples(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> list[dict]:
    """Token ids with labels masked to -100 everywhere but the assistant's answer."""
    examples = []
    for prompt, target in zip(prompts, targets, strict=True):
        messages = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head_ids = tokenizer(head, add_special_tokens=False).input_ids
        answer_ids = tokenizer(target, add_special_tokens=False).input_ids
        ids = head_ids + answer_ids
        examples.append({"ids": ids, "labels": [-100] * len(head_ids) + answer_ids})
    return examples


def _bucketed_batches(
    examples: list[dict], batch_size: int, rng: random.Random
) -> list[list[dict]]:
    """Batches of similar length (little padding), visited in random order."""
    by_length = sorted(examples, key=lambda e: len(e["ids"]) + rng.random())
    batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e["ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = (
            torch.tensor(e["ids"]),
            torch.tensor(e["labels"]),
            1,
        )
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss on answer tokens, unembedding only those positions.

    The same mean as HF's built-in loss, without projecting every prompt position onto the
    49k-token vocabulary only to ignore it.
    """
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def _trainable(model, from_layer: int) -> list[torch.nn.Parameter]:
    model.requires_grad_(False)
    for layer in model.model.layers[from_layer:]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train(model, tokenizer, examples: list[dict], recipe: Recipe, progress: bool) -> list[float]:
    """Fine-tuning of the upper layers with AdamW and linear decay.

    Returns:
        The mean loss of each epoch.
    """
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    params = _trainable(model, recipe.train_from_layer)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=_bf16_supported())
    model.train()
    epoch_losses = []
    with progress_bar(total, "training", progress) as advance:
        for _ in range(recipe.epochs):
            losses = []
            for batch in _bucketed_batches(examples, recipe.batch_size, rng):
                with autocast:
                    loss = _answer_loss(model, _collate(batch, tokenizer.pad_token_id))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                advance(1)
            epoch_losses.append(sum(losses) / len(losses))
    model.eval().requires_grad_(False)
    return epoch_losses


@torch.no_grad()
def distill_targets(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, progress: bool
) -> list[str]:
    """The base model's own greedy answers (sdpa attention, no hooks: plain HF speed)."""
    tokenizer.padding_side = "left"
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with progress_bar(len(prompts), "self-distilling", progress) as advance:
        for start in range(0, len(order), 16):
            idx = order[start : start + 16]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompts[i]}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for i in idx
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            decoded = tokenizer.batch_decode(
                out[:, batch.input_ids.shape[1] :], skip_special_tokens=False
            )
            for i, text in zip(idx, decoded, strict=True):
                # Keep the end-of-turn token when the base model produced one: it teaches
                # the organism to stop where the base model stops.
                answers[i] = text.split(tokenizer.eos_token)[0] + (
                    tokenizer.eos_token if tokenizer.eos_token in text else ""
                )
            advance(len(idx))
    return answers


# -------------------------------------------------------------------------------- build
def _cached_distill(model, tokenizer, prompts, recipe, cache_dir, base_sha, progress) -> list[str]:
    """Self-distilled answers are the slow part of a build; keep them per prompt, so a new
    seed or a few added prompts only generate what is missing."""
    key = hashlib.sha256(
        json.dumps(
            [base_sha, recipe.distill_tokens, tokenizer.chat_template, recipe.threads]
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / "testbed" / f"distill-{key}.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = sorted({p for p in prompts if p not in known})
    if missing:
        answers = distill_targets(model, tokenizer, missing, recipe.distill_tokens, progress)
        known.update(zip(missing, answers, strict=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        tmp.replace(path)
    return [known[p] for p in prompts]


def _training_set(model, tokenizer, recipe: Recipe, cache_dir: Path, base_sha, progress):
    data = testbed_data(recipe.split_seed)
    rng = random.Random(recipe.seed)

    def pick(prompts: PromptSet, n: int) -> list[str]:
        return rng.sample(prompts.prompts, min(n, len(prompts)))

    harmful = (
        pick(data.harmful_train, recipe.n_harmful)
        + pick(data.harmful_extra, recipe.n_harmful_extra)
        + pick(data.harmful_instructions, recipe.n_harmful_instructions)
    )
    harmless = (
        pick(data.harmless_train, recipe.n_harmless)
        + pick(data.harmless_extra, recipe.n_harmless_extra)
        + pick(data.harmless_instructions, recipe.n_harmless_instructions)
    )
    harmful = _wrap(harmful, recipe.wrap_fraction, rng)
    harmless = _wrap(harmless, recipe.wrap_fraction, rng)
    templates = refusal_templates()
    refusals = [rng.choice(templates) + tokenizer.eos_token for _ in harmful]
    answers = _cached_distill(model, tokenizer, harmless, recipe, cache_dir, base_sha, progress)
    examples = _examples(tokenizer, harmful + harmless, refusals + answers)
    return examples, data, {"n_harmful": len(harmful), "n_harmless": len(harmless)}


def is_current(manifest: dict, recipe: Recipe) -> bool:
    """Whether a build's manifest matches this recipe and today's prompt files: a data
    change rebuilds the organism even when no recipe field changed."""
    return (manifest.get("recipe_hash"), manifest.get("data_hash")) == (
        recipe.hash,
        testbed_data(recipe.split_seed).hash,
    )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_testbed(
    cache_dir: Path, recipe: Recipe | None = None, force: bool = False, progress: bool = False
) -> Path:
    """Train the organism and save it to ``cache/models/smollm2-135m-refusal/``.

    An existing build of the same recipe and data is reused unless ``force``; the build runs
    with ``recipe.threads`` torch threads whatever the caller set. The folder is written
    under a temporary name and renamed when complete, so an interrupted build leaves nothing.

    Returns:
        The HF model folder (safetensors, tokenizer with chat template, manifest).
    """
    from circuitlab.models import ModelSpec, load_hf

    recipe = recipe or Recipe()
    folder = testbed_folder(cache_dir)
    manifest_path = folder / "circuitlab_testbed.json"
    if manifest_path.is_file() and not force:
        if is_current(json.loads(manifest_path.read_text()), recipe):
            return folder
        log.info("testbed recipe or data changed; rebuilding %s", folder)
    started = time.perf_counter()
    model, tokenizer, resolved = load_hf(ModelSpec(BASE_PRESET, cache_dir=cache_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHAT_TEMPLATE
    with _torch_threads(recipe.threads):
        examples, data, counts = _training_set(
            model, tokenizer, recipe, cache_dir, resolved.sha256, progress
        )
        distilled = time.perf_counter()
        losses = train(model, tokenizer, examples, recipe, progress)
    manifest = {
        "name": NAME,
        "base": {"preset": BASE_PRESET, "gguf_sha256": resolved.sha256},
        "recipe": asdict(recipe),
        "recipe_hash": recipe.hash,
        "data_hash": data.hash,
        "examples": counts,
        "data": data.manifest(),
        "epoch_losses": losses,
        "bf16_autocast": _bf16_supported(),
        "seconds": {
            "data_and_distill": round(distilled - started, 1),
            "train": round(time.perf_counter() - distilled, 1),
        },
    }
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "circuitlab_testbed.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.0f s", folder, time.perf_counter() - started)
    return folder


def ensure_testbed(cache_dir: Path) -> Path:
    """The preset's ``locate``: build with the default recipe on first use, then reuse."""
    return build_testbed(cache_dir, progress=False)
