"""The model card (``README.md``) written with every export, merged or adapter.

A hub user expects the YAML front matter to name ``base_model``, the licence and tags, and
the text to say what changed, how well it works and how to reproduce it. The source's own
metadata is inherited where it has any: the hub card (when cached), a local folder's
``README.md`` front matter or a hub snapshot path, and the upstream of the offline presets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SourceInfo", "render_card", "source_info"]

# Offline presets and the hub models their weights come from (dequantised from a GGUF).
PRESET_UPSTREAM = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
}
_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")
_INHERITED = ("license", "license_name", "license_link", "language", "tags", "datasets")


@dataclass
class SourceInfo:
    """What the card inherits from the source model.

    Attributes:
        base_model: the hub id the edited weights derive from (None: no hub id is known).
        meta: front matter fields inherited from the source's card (licence, languages, tags).
        note: one sentence on where the source came from (a preset, a local build).
    """

    base_model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    exact: bool = True  # False: base_model is an ancestor the source was trained from


def _front_matter(text: str) -> dict[str, Any]:
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _hub_card(repo: str) -> dict[str, Any]:
    """The cached hub card's front matter (never a download: exports work offline)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, "README.md", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, offline, no client: nothing to inherit
        return {}
    return _front_matter(Path(path).read_text(encoding="utf-8", errors="replace"))


def _local(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    return _front_matter(readme.read_text(encoding="utf-8", errors="replace"))


def source_info(model) -> SourceInfo:
    """Base model id, licence and tags of the hooked model's source, where it has them."""
    resolved, spec_source = model.resolved, str(getattr(model, "source", "") or "")
    location = resolved.location
    if resolved.kind == "hub":
        meta = _hub_card(location)
        return SourceInfo(location, _pick(meta), "")
    folder = Path(location)
    meta = _local(folder)
    snapshot = _SNAPSHOT.search(str(folder.resolve()) + "/")
    if snapshot:
        repo = f"{snapshot.group(1)}/{snapshot.group(2)}"
        return SourceInfo(repo, _pick(meta or _hub_card(repo)), "")
    preset = _preset_name(folder, spec_source)
    if preset in PRESET_UPSTREAM:
        repo, licence = PRESET_UPSTREAM[preset]
        return SourceInfo(
            repo, {"license": licence, **_pick(meta)},
            f"the `{preset}` preset: {repo}'s weights dequantised from a GGUF file",
        )  # fmt: skip
    built = _built_from(folder)
    if built in PRESET_UPSTREAM:
        repo, licence = PRESET_UPSTREAM[built]
        # The weights were trained further: the hub id is an ancestor, not this model.
        return SourceInfo(
            repo, {"license": licence, **_pick(meta)},
            f"built locally by fine-tuning {repo} (the `{built}` preset)", exact=False,
        )  # fmt: skip
    return SourceInfo(meta.get("base_model") if isinstance(meta.get("base_model"), str)
                      else None, _pick(meta), "")  # fmt: skip


def _pick(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in _INHERITED if meta.get(k)}


def _preset_name(folder: Path, source: str) -> str | None:
    for name in PRESET_UPSTREAM:
        if source == name or folder.name.startswith(name.replace("-", "")):
            return name
    # Converted GGUF presets live in cache/models/<gguf stem>-<sha>; match the stem's model.
    lower = folder.name.lower()
    if lower.startswith("smollm2-135m-instruct"):
        return "smollm2-135m"
    if lower.startswith("gemma-3-270m"):
        return "gemma3-270m"
    return source if source in PRESET_UPSTREAM else None


def _built_from(folder: Path) -> str | None:
    """A testbed organism records the preset it was trained from."""
    record = folder / "circuitlab_testbed.json"
    try:
        base = json.loads(record.read_text())["base"]["preset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) else None


# --------------------------------------------------------------------------------- text
def _front(data: dict[str, Any], info: SourceInfo, adapter: bool) -> str:
    tags = ["circuitlab", "interpretability", "weight-edit"]
    if adapter:
        tags += ["lora", "peft"]
    inherited = info.meta.get("tags") or []
    meta: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    # An adapter applies to its exact base only; an edited fine-tune descends from its ancestor.
    if info.base_model and (info.exact or not adapter):
        meta["base_model"] = info.base_model
        if adapter:
            meta["base_model_relation"] = "adapter"
        elif not info.exact:
            meta["base_model_relation"] = "finetune"
    for key in ("license", "license_name", "license_link", "language", "datasets"):
        if key in info.meta:
            meta[key] = info.meta[key]
    meta["tags"] = list(dict.fromkeys([*(t for t in inherited if isinstance(t, str)), *tags]))
    meta["pipeline_tag"] = "text-generation"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _find_cards(value: Any, path: str = "") -> list[tuple[str, dict]]:
    """Every scorecard-shaped dict in ``value`` with where it sat (``test.edited``)."""
    if isinstance(value, dict):
        if "refusals" in value and "n_harmful" in value:
            return [(path, value)]
        found = []
        for key, item in value.items():
            found += _find_cards(item, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(value, list):
        return [hit for i, item in enumerate(value) for hit in _find_cards(item, f"{path}[{i}]")]
    return []


def _scorecard(score: Any) -> str:
    """A table with intervals for the circuitlab scorecards in ``score`` (an ``evaluate
    --json`` list, a search's test-split record); anything else as the JSON it came as."""
    from circuitlab.evaluate.scorecard import Scorecard, scorecard_rows

    if not score:
        return ""
    raw = f"```json\n{json.dumps(score, indent=1)}\n```\n"
    found = _find_cards(score)
    try:
        parsed = [Scorecard.from_json(json.dumps(card)) for _, card in found]
    except (TypeError, ValueError, KeyError):
        parsed = []
    if not parsed:
        return f"\n## Scorecard\n\n{raw}"
    names = [path or card.model for (path, _), card in zip(found, parsed, strict=True)]
    rows = scorecard_rows(*parsed)
    head = "| | " + " | ".join(f"`{n}`" for n in names) + " |\n"
    head += "|---" * (len(parsed) + 1) + "|\n"
    body = "".join(f"| {name} | " + " | ".join(v) + " |\n" for name, v in rows.items())
    split = parsed[0].split or "the harmful prompts"
    rule = f"Chosen by: {score['rule']}.\n\n" if isinstance(score, dict) and "rule" in score else ""
    return (
        f"\n## Scorecard (held-out split: {split})\n\n{rule}"
        f"Rates with 95 % Wilson intervals, judged by {parsed[0].judge}.\n\n{head}{body}\n"
        f"<details><summary>as recorded</summary>\n\n{raw}\n</details>\n"
    )


def _parity_row(parity: dict[str, Any], label: str) -> str:
    return (
        f"| {label} | {parity['max_abs_logit_diff']:.2e} | {parity['mean_kl']:.2e} | "
        f"{parity['max_kl']:.2e} | {parity['greedy_agree']}/{parity['n_prompts']} "
        f"({parity['near_ties']} near-ties) | {parity['n_positions']} | "
        f"{parity['tolerance']:g} |\n"
    )


def _parity(data: dict[str, Any]) -> str:
    rows = _parity_row(data["parity"], "folded weights")
    client = data.get("client_parity")
    if client:
        rows += _parity_row(client, "base + this adapter, loaded by peft")
    return (
        "## Parity: the hooked model against the export (checked before writing)\n\n"
        "| compared with the hooks | max abs logit diff | mean KL | max KL | greedy identical "
        "| positions | tolerance |\n|---|---|---|---|---|---|---|\n" + rows
    )


def _edits(data: dict[str, Any]) -> str:
    notes = list(data["fold"]["notes"])
    adapter = data.get("adapter")
    if adapter:
        # The adapter leaves the base's lm_head alone: nothing is untied.
        notes = [n for n in notes if "untied" not in n]
        notes += [adapter["note"]] if adapter.get("note") else []
        ranks = sorted({m["rank"] for m in adapter["modules"].values()})
        notes.append(
            f"LoRA on {len(adapter['modules'])} modules, ranks {ranks}; the factors reproduce "
            f"the fold to a relative {adapter['max_relative_reconstruction_error']:.1e}"
        )
    lines = []
    for summary, iv, digest in zip(
        data["summary"], data["interventions"], data["directions"]["per_intervention"],
        strict=False,
    ):  # fmt: skip
        ref = iv.get("directions") if isinstance(iv, dict) else None
        where = ""
        if isinstance(ref, dict) and ref.get("path"):
            where = f", from `{ref['path']}`"
        lines.append(f"- `{summary}` (directions `{(digest or '-')[:16]}`{where})")
    layers = sorted({int(m) for k in data["fold"]["edited_tensors"]
                     for m in re.findall(r"layers\.(\d+)\.", k)})  # fmt: skip
    embed = any("embed" in k for k in data["fold"]["edited_tensors"])
    touched = ", ".join(str(x) for x in layers) or "none"
    weights = _weights(data)
    return (
        "## Edits (applied in this order)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + weights
        + f"{len(data['fold']['edited_tensors'])} tensors changed: layers {touched}"
        f"{' and the embedding' if embed else ''}. Beyond that:\n\n"
        + ("\n".join(f"- {n}" for n in notes) or "- (nothing)")
        + "\n"
    )


def _weights(data: dict[str, Any]) -> str:
    """Per-layer weights of each weighted ablation (the fraction of its direction removed
    from each writer's output), as a table folded away under the summary."""
    from circuitlab.interventions import from_dict

    n_layers = data["model"].get("n_layers")
    out = []
    for i, item in enumerate(data["interventions"]):
        try:
            iv = from_dict(item)
        except Exception:  # noqa: BLE001 - an unreadable record: the summary line stays
            continue
        if not hasattr(iv, "site_weight") or not n_layers:
            continue
        rows = [
            (layer, iv.site_weight("attn", layer), iv.site_weight("mlp", layer))
            for layer in range(n_layers)
        ]
        rows = [r for r in rows if r[1] or r[2]]
        table = "".join(f"| {la} | {a:.3f} | {m:.3f} |\n" for la, a, m in rows)
        out.append(
            f"<details><summary>edit {i + 1}: weight per layer (embedding "
            f"{iv.site_weight('embed', 0):.3f})</summary>\n\n| layer | attention out | MLP out |"
            f"\n|---|---|---|\n{table}\n</details>\n"
        )
    return "\n".join(out) + ("\n" if out else "")


def _load(name: str, info: SourceInfo, data: dict[str, Any], adapter: bool) -> str:
    if not adapter:
        return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/{name}")
tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")
```
"""
    base = data["adapter"]["base_model_name_or_path"]
    hub = info.base_model if info.exact and info.base_model else base
    bias = any(m["bias"] for m in data["adapter"]["modules"].values())
    merge = (
        "PEFT cannot merge it into the base weights (`lora_bias` on layers without a bias): "
        "use the merged export for a standalone model."
        if bias
        else "`model.merge_and_unload()` gives standalone weights (as the merged export does)."
    )
    return f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{hub}")
model = PeftModel.from_pretrained(base, "path/to/{name}")
tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")
```

Every edit is an exact low-rank update (alpha = r, so the scale is 1); {merge}
"""


def _share(name: str, data: dict[str, Any], adapter: bool) -> str:
    untied = any("untied" in n for n in data["fold"]["notes"])
    if adapter:
        gguf = (
            "llama.cpp converts the adapter itself: `python convert_lora_to_gguf.py "
            f"path/to/{name} --base path/to/base-model --outfile {name}.gguf`, then "
            "`llama-cli -m base.gguf --lora " + name + ".gguf`."
        )
    else:
        gguf = (
            f"llama.cpp: `python convert_hf_to_gguf.py path/to/{name} --outfile {name}.gguf "
            "--outtype f16`, then quantize with `llama-quantize` as usual."
        )
    tied = (
        " The source ties its output layer to the embedding and an edit touched the "
        "embedding, so this export is **untied**: it carries a separate `lm_head` "
        "(vocabulary x hidden size more parameters, in the GGUF too)."
        if untied and not adapter
        else ""
    )
    return f"""## Sharing it

Upload: `huggingface-cli upload your-name/{name} path/to/{name} .` or, from Python,
`huggingface_hub.upload_folder(repo_id="your-name/{name}", folder_path="path/to/{name}")`.

GGUF: {gguf}{tied}
"""


def render_card(data: dict[str, Any], name: str, model=None) -> str:
    """The model card for an export's manifest ``data`` (merged or adapter).

    Args:
        data: the manifest (:func:`circuitlab.export.manifest`, plus ``adapter``,
            ``client_parity`` and ``command`` where present).
        name: the export folder's name.
        model: the hooked source model, to inherit its card's metadata (None: none).
    """
    adapter = "adapter" in data
    info = source_info(model) if model is not None else SourceInfo()
    source = data["source"]
    what = "A PEFT LoRA adapter for" if adapter else "An edited copy of"
    origin = f"; the source was {info.note}" if info.note else ""
    shown = info.base_model if info.base_model and info.exact else source["location"]
    version = data["versions"].get("circuitlab")
    command = data.get("command")
    reproduce = f"## Reproduce\n\n```sh\n{command}\n```\n\n" if command else ""
    licence = info.meta.get("license")
    return f"""{_front(data, info, adapter)}
# {name}

{what} `{shown}` ({data["model"]["architecture"]}){origin}.
circuitlab {version} found these edits with hooks, folded them into the weights, and proved
the result against the hooks before writing{" it as an exact low-rank adapter" if adapter else ""}.

{_load(name, info, data, adapter)}
{_edits(data)}
{_parity(data)}{_scorecard(data.get("scorecard"))}
{reproduce}{_share(name, data, adapter)}
## Provenance and licence

`circuitlab_manifest.json` holds the interventions as JSON (directions hash
`{data["directions"]["hash"]}`), the parity figures, the seed and the versions of every
library involved. The base model's licence{f" (`{licence}`)" if licence else ""} and terms
apply to this {"adapter" if adapter else "copy"}.
"""
