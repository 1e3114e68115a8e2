"""Refusal model organisms: small offline models, safety-tuned on CPU.

The offline models do not refuse, so nothing about refusal removal could be shown on them.
We give them a learned refusal the way chat models get theirs, by supervised safety
fine-tuning. One :class:`Recipe` per organism (:data:`ORGANISMS`) says what differs between
them: the base model, its chat format, which layers train and how, and where the harmless
answers come from:

* ``smollm2-135m-refusal``: SmolLM2-135M-Instruct (Llama, ChatML), its own greedy answers;
* ``gemma3-270m-refusal``: the Gemma 3 270M *base* model (sandwich norms, MQA, 262k vocab)
  with the Gemma chat format; a base model has no answers of its own worth keeping, so its
  harmless answers are distilled from SmolLM2-135M-Instruct, the only instruction-tuned
  model available offline.

Both see the same data:

* harmful prompts: the AdvBench train split (JailbreakBench and StrongREJECT are removed from
  AdvBench first and kept entirely for evaluation) and our own sets (questions, personas,
  how-to requests), answered with our refusal templates;
* harmless prompts: our harmless train split and our own sets worded like the harmful ones,
  answered with a **teacher's greedy answers** (the base model itself where it is
  instruction-tuned: self-distillation keeps harmless behaviour close to the base model);
* the same surface wrappers ("Can you …?", "Please …") go on both sides at the same rate, so
  the form of a request is no cue — only its content is.

Loss is on assistant tokens only; batches are length-bucketed; everything is seeded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import torch

from circuitlab._resources import atomic_folder, atomic_write, file_sha256, json_hash
from circuitlab.decoding import Runner, eos_ids, generate_tokens
from circuitlab.progress import progress_bar
from circuitlab.prompts import PromptSet, load_prompts

__all__ = [
    "ORGANISMS",
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
GEMMA_NAME = "gemma3-270m-refusal"

# Fields added with the second organism. At these values (the first organism's) they stay
# out of the recipe hash, so builds made before they existed keep their name.
_LATER_FIELDS = {
    "name": NAME,
    "base": BASE_PRESET,
    "chat_format": "chatml",
    "teacher": "",
    "teacher_format": "",
}


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
    name: str = NAME
    # A preset, model folder or GGUF file.
    base: str = BASE_PRESET
    # A key of CHAT_FORMATS: the template the organism ships with and trains on.
    chat_format: str = "chatml"
    # Where harmless answers come from ("": the base model itself), in which chat format
    # ("": the organism's own).
    teacher: str = ""
    teacher_format: str = ""

    @property
    def hash(self) -> str:
        fields = {
            k: v for k, v in asdict(self).items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]
        }
        return json_hash(fields, 12)


# ChatML without SmolLM2's default system prompt: ~20 fewer tokens in every training and
# evaluation sequence. The organism ships with this template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma's turn markup; a base Gemma has no template of its own. System text goes in front
# of the first user turn, as Gemma's instruction-tuned models do (they have no system role).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.prefix = message['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' "
    "else message['role']) + '\n' + ns.prefix + message['content'] + '<end_of_turn>\n' }}"
    "{% set ns.prefix = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and the token that ends an assistant turn (the organism's eos)."""

    template: str
    end_of_turn: str


CHAT_FORMATS = {
    "chatml": ChatFormat(CHAT_TEMPLATE, "<|im_end|>"),
    "gemma": ChatFormat(GEMMA_TEMPLATE, "<end_of_turn>"),
}

ORGANISMS: dict[str, Recipe] = {
    NAME: Recipe(),
    # The same prompts and seed as the first organism (so SmolLM2's cached answers serve
    # both). The 262k-row embedding (most of the 270M parameters) stays frozen with the lower
    # layers: no gradient or optimizer state for it, and a build that fits in minutes.
    GEMMA_NAME: Recipe(
        name=GEMMA_NAME,
        base="gemma3-270m",
        chat_format="gemma",
        teacher=BASE_PRESET,
        teacher_format="chatml",
        train_from_layer=6,
        epochs=2,
        lr=1e-4,
    ),
}


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
        return json_hash(self.manifest(), 12)


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


def testbed_folder(cache_dir: Path, name: str = NAME) -> Path:
    return Path(cache_dir) / "models" / name


def organism_recipe(name: str) -> Recipe:
    """The recipe of a named organism; a one-line error for an unknown name."""
    from circuitlab.errors import ConfigError

    if name not in ORGANISMS:
        raise ConfigError(f"unknown organism {name!r}; known: {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


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
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 and some Gemma 3 sizes squash their logits; train what they output
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets[keep])


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
    """``model``'s greedy answers (the base model's own, or the recipe's teacher's; sdpa
    attention, no hooks: plain HF speed)."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    run = Runner(model, model.device, tokenizer.pad_token_id)
    eos = eos_ids(model, tokenizer)
    found = generate_tokens(
        run, rows, max_new_tokens, eos, progress=progress, label="distilling harmless answers"
    )
    # Keep the end-of-turn token when the base model produced one: it teaches the organism
    # to stop where the base model stops.
    decoded = tokenizer.batch_decode(found.tokens, skip_special_tokens=False)
    return [
        text.split(tokenizer.eos_token)[0]
        + (tokenizer.eos_token if tokenizer.eos_token in text else "")
        for text in decoded
    ]


# -------------------------------------------------------------------------------- build
def _cached_distill(teacher, prompts, recipe, cache_dir, sha, template, progress) -> list[str]:
    """Distilled answers are the slow part of a build; keep them per prompt, so a new seed, a
    few added prompts or another organism with the same teacher only generate what is
    missing. ``teacher`` is called (it loads the model) only when something is missing.

    Returns:
        The teacher's answers, each ending with the teacher's eos where it stopped.
    """
    key = json_hash([sha, recipe.distill_tokens, template, recipe.threads])
    path = cache_dir / "testbed" / f"distill-{key}.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = sorted({p for p in prompts if p not in known})
    if missing:
        model, tokenizer = teacher()
        answers = distill_targets(model, tokenizer, missing, recipe.distill_tokens, progress)
        known.update(zip(missing, answers, strict=True))
        atomic_write(path, json.dumps(known, indent=1, sort_keys=True))
    return [known[p] for p in prompts]


def _teacher_answers(model, tokenizer, prompts, recipe, cache_dir, base_sha, progress):
    """Harmless answers from the recipe's teacher, ending with the organism's end of turn
    wherever the teacher stopped."""
    if not recipe.teacher:
        return _cached_distill(
            lambda: (model, tokenizer), prompts, recipe, cache_dir, base_sha,
            tokenizer.chat_template, progress,
        )  # fmt: skip
    from circuitlab.models import ModelSpec, load_hf
    from circuitlab.models.loading import resolve_source

    spec = ModelSpec(recipe.teacher, cache_dir=cache_dir)
    chat = CHAT_FORMATS[recipe.teacher_format or recipe.chat_format]

    def teacher():
        t_model, t_tokenizer, _ = load_hf(spec)
        t_tokenizer.chat_template = chat.template
        if t_tokenizer.pad_token_id is None:
            t_tokenizer.pad_token = t_tokenizer.eos_token
        return t_model, t_tokenizer

    resolved = resolve_source(spec)
    sha = resolved.sha256 or str(resolved.location)  # a folder has no GGUF hash
    answers = _cached_distill(teacher, prompts, recipe, cache_dir, sha, chat.template, progress)
    return _retag(answers, chat, CHAT_FORMATS[recipe.chat_format])


def _retag(answers: list[str], teacher: ChatFormat, organism: ChatFormat) -> list[str]:
    """Swap the teacher's end-of-turn token for the organism's where an answer ended."""
    cut = len(teacher.end_of_turn)
    return [
        a[:-cut] + organism.end_of_turn if a.endswith(teacher.end_of_turn) else a for a in answers
    ]


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
    answers = _teacher_answers(model, tokenizer, harmless, recipe, cache_dir, base_sha, progress)
    examples = _examples(tokenizer, harmful + harmless, refusals + answers)
    return examples, data, {"n_harmful": len(harmful), "n_harmless": len(harmless)}


def is_current(manifest: dict, recipe: Recipe) -> bool:
    """Whether a build's manifest matches this recipe and today's prompt files: a data
    change rebuilds the organism even when no recipe field changed."""
    return (manifest.get("recipe_hash"), manifest.get("data_hash")) == (
        recipe.hash,
        testbed_data(recipe.split_seed).hash,
    )


def _other_runnable() -> float | None:
    """Tasks (threads) other than this one that want a core now: the fewest of five looks at
    ``/proc/loadavg``'s running count (a passing spike is not a busy CPU); elsewhere the
    1-minute load average less this process."""
    try:
        looks = []
        for _ in range(5):
            looks.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
            time.sleep(0.05)
        return min(looks)
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] - 1 if hasattr(os, "getloadavg") else None


def _warn_if_busy(threads: int) -> None:
    """Say so when other jobs already keep the cores busy: the build's thread count is fixed
    (it sets the weights' last bits), and OpenMP threads that find their cores taken spin
    at every barrier, which made a build here many times slower than alone."""
    others, cores = _other_runnable(), os.cpu_count() or 1
    if others is not None and others + threads > cores:
        log.warning(
            "the CPU is busy (%g other running jobs on %d cores): the build's %d threads may "
            "run many times slower beside them; run it alone",
            others, cores, threads,
        )  # fmt: skip


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
    """Train an organism (default: the first) and save it to ``cache/models/<name>/``.

    An existing build of the same recipe and data is reused unless ``force``; the build runs
    with ``recipe.threads`` torch threads whatever the caller set. The folder is written
    under a temporary name and renamed when complete, so an interrupted build leaves nothing.

    Returns:
        The HF model folder (safetensors, tokenizer with chat template, manifest).
    """
    from circuitlab.models import ModelSpec, load_hf

    recipe = recipe or Recipe()
    folder = testbed_folder(cache_dir, recipe.name)
    manifest_path = folder / "circuitlab_testbed.json"
    if manifest_path.is_file() and not force:
        if is_current(json.loads(manifest_path.read_text()), recipe):
            return folder
        log.info("testbed recipe or data changed; rebuilding %s", folder)
    _warn_if_busy(recipe.threads)
    started = time.perf_counter()
    chat = CHAT_FORMATS[recipe.chat_format]
    model, tokenizer, resolved = load_hf(ModelSpec(recipe.base, cache_dir=cache_dir))
    _set_end_of_turn(model, tokenizer, chat.end_of_turn)
    tokenizer.chat_template = chat.template
    with _torch_threads(recipe.threads):
        # A folder base has no GGUF hash: its path keys the distilled answers instead.
        key = resolved.sha256 or str(resolved.location)
        examples, data, counts = _training_set(model, tokenizer, recipe, cache_dir, key, progress)
        distilled = time.perf_counter()
        losses = train(model, tokenizer, examples, recipe, progress)
    manifest = {
        "name": recipe.name,
        "base": {"preset": recipe.base, "gguf_sha256": resolved.sha256},
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
    with atomic_folder(folder, create=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The build is bit-reproducible on one machine type: a user compares these hashes
        # with the reference build's to know the organism's figures apply to theirs.
        manifest["weights_sha256"] = {
            p.name: file_sha256(p) for p in sorted(tmp.glob("*.safetensors"))
        }
        (tmp / "circuitlab_testbed.json").write_text(json.dumps(manifest, indent=2))
    log.info("built %s in %.0f s", folder, time.perf_counter() - started)
    return folder


def _set_end_of_turn(model, tokenizer, end_of_turn: str) -> None:
    """Make the chat format's end-of-turn token the eos everywhere generation looks for it
    (a base model's eos ends documents, not turns), and give the tokenizer a pad token."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token == end_of_turn:
        return
    tokenizer.eos_token = end_of_turn
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def ensure_testbed(cache_dir: Path, name: str = NAME) -> Path:
    """A preset's ``locate``: build the named organism on first use, then reuse it."""
    return build_testbed(cache_dir, organism_recipe(name), progress=False)
