"""Export: folded weights reload with plain transformers and reproduce the hooked model.

The round trips export each intervention type on five architectures (three random-init
tiny configs, the two presets), reload every export in a subprocess that never imports
circuitlab, and compare its logits and greedy continuations with the hooked model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import example_interventions, orthonormal, tiny_model

from circuitlab.directions import DirectionSet
from circuitlab.engine import HookedModel
from circuitlab.export import (
    HELD_OUT_PROMPTS,
    MANIFEST,
    ExportError,
    ExportOptions,
    Parity,
    Reference,
    compare,
    export,
    fold,
    manifest,
    plan_fold_edits,
    reference,
    run_plain,
    save,
    verify,
)
from circuitlab.export.save import EDITS
from circuitlab.interventions import (
    ActivationAddition,
    ConeRouting,
    DirectionalAblation,
    DirectionRef,
    DynamicStrength,
    save_intervention,
)
from circuitlab.plan import (
    HeadProjection,
    ResidualAddition,
    WriterProjection,
    load_edits,
    planner,
    writer_hook,
)

KINDS = ["directional", "subspace", "addition", "head"]
TINY = ["tiny-llama-gqa-4/2", "tiny-llama-mha-untied", "tiny-gemma3-mqa"]
# The presets' round trips take minutes (0.5 and 1.1 GB written and reloaded four times).
ARCHS = [*TINY, *(pytest.param(name, marks=pytest.mark.slow) for name in ("smollm", "gemma"))]

# Run by a fresh interpreter: plain transformers only, so a pass proves the export stands alone.
RELOAD = r"""
import json, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
job = json.load(open(sys.argv[1]))
for kind, folder in job["folders"].items():
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outputs = {}
    with torch.no_grad():
        for i, batch in enumerate(job["batches"]):
            ids = torch.tensor(batch["input_ids"])
            mask = torch.tensor(batch["attention_mask"])
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            outputs[f"logits.{i}"] = logits[mask.bool()].float().contiguous()
            new = model.generate(input_ids=ids, attention_mask=mask, **job["generate"])
            outputs[f"tokens.{i}"] = new[:, ids.shape[1]:].contiguous()
    save_file(outputs, f"{job['out']}/{kind}.safetensors")
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    facts = {
        "tie_word_embeddings": model.config.tie_word_embeddings,
        "lm_head_is_embedding": head.data_ptr() == embed.data_ptr(),
        "mlp_bias": getattr(model.config, "mlp_bias", None),
        "circuitlab_imported": any(m.split(".")[0] == "circuitlab" for m in sys.modules),
    }
    json.dump(facts, open(f"{job['out']}/{kind}.json", "w"))
"""


@dataclass
class RoundTrip:
    """One exported intervention, compared with the hooked model twice."""

    parity: Parity  # the folded model in memory (what export checks before writing)
    reloaded: Parity  # the written folder, reloaded by plain transformers in a subprocess
    effect: float  # max |Δlogit|, hooked vs unedited: the edit did something
    facts: dict  # what the subprocess saw
    manifest: dict


def _reload_in_subprocess(ref: Reference, folders: dict[str, Path], work: Path) -> None:
    config = ref.config
    job = {
        "folders": {k: str(v) for k, v in folders.items()},
        "batches": [{k: v.tolist() for k, v in b.items()} for b in ref.batches],
        "generate": {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": False,
            "pad_token_id": config.pad_token_id,
            "eos_token_id": config.eos_token_id,
        },
        "out": str(work),
    }
    (work / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(work / "job.json")],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=work,  # not the repo: `import circuitlab` must not resolve by accident
    )
    assert done.returncode == 0, done.stderr[-3000:]


@torch.no_grad()
def _effect(model, ref: Reference) -> float:
    """Largest logit change the interventions make (hooked vs the unedited model)."""
    worst = 0.0
    for batch, hooked in zip(ref.batches, ref.logits, strict=True):
        clean = model.hf_model(**batch, use_cache=False).logits[batch["attention_mask"].bool()]
        worst = max(worst, (hooked - clean.float()).abs().max().item())
    return worst


def _export_one(model, interventions, out: Path) -> tuple[Reference, Parity, dict]:
    """export(), stage by stage, keeping the hooked reference for the reload check."""
    folded = fold(model, interventions)
    hf_model = folded.build()
    ref = reference(model, interventions)
    parity = compare(ref, *run_plain(hf_model, ref))
    assert parity.passed, parity.summary()
    data = manifest(model, interventions, folded, parity, seed=0)
    save(hf_model, model, out, data, edits=folded.plan.planned)
    return ref, parity, data


def _round_trips(model, work: Path) -> dict[str, RoundTrip]:
    folders, done = {}, {}
    for kind in KINDS:
        folders[kind] = work / kind
        done[kind] = _export_one(model, example_interventions(model, kind), folders[kind])
    _reload_in_subprocess(done[KINDS[0]][0], folders, work)  # every kind: the same batches
    trips = {}
    for kind, (ref, parity, data) in done.items():
        saved = load_file(work / f"{kind}.safetensors")
        n = len(ref.batches)
        logits = [saved[f"logits.{i}"] for i in range(n)]
        tokens = [saved[f"tokens.{i}"] for i in range(n)]
        facts = json.loads((work / f"{kind}.json").read_text())
        trips[kind] = RoundTrip(
            parity, compare(ref, logits, tokens), _effect(model, ref), facts, data
        )
    for folder in folders.values():  # the presets' exports are 0.5-1.1 GB each
        shutil.rmtree(folder)
    return trips


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory, cache_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: tiny_model(kind, root / kind.replace("/", "_"), cache_dir) for kind in TINY}


@pytest.fixture(scope="session")
def tiny_models(tiny_paths) -> dict[str, HookedModel]:
    return {kind: HookedModel.load(str(path)) for kind, path in tiny_paths.items()}


@pytest.fixture(scope="session")
def round_trips(request, tmp_path_factory):
    """arch -> kind -> RoundTrip, computed once per architecture when first asked for."""
    done: dict[str, dict[str, RoundTrip]] = {}

    def get(arch: str) -> dict[str, RoundTrip]:
        if arch not in done:
            if arch in TINY:
                model = request.getfixturevalue("tiny_models")[arch]
            else:
                model = request.getfixturevalue(arch)
            done[arch] = _round_trips(model, tmp_path_factory.mktemp(arch.replace("/", "_")))
        return done[arch]

    return get


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_reloaded_export_matches_the_hooked_model(round_trips, arch, kind):
    trip = round_trips(arch)[kind]
    assert not trip.facts["circuitlab_imported"]
    assert trip.effect > 1e-2, "the intervention must visibly change the model"
    for parity in (trip.parity, trip.reloaded):
        assert parity.max_abs_logit_diff < 1e-3, parity.summary()
        assert parity.greedy_agree == parity.n_prompts == len(HELD_OUT_PROMPTS)


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_edits_untie_and_additions_keep_their_bias(round_trips, arch):
    trips = round_trips(arch)
    directional, addition = trips["directional"].facts, trips["addition"].facts
    assert not directional["tie_word_embeddings"] and not directional["lm_head_is_embedding"]
    llama = trips["addition"].manifest["model"]["model_type"] == "llama"
    assert addition["mlp_bias"] is (True if llama else None)  # reloaded without circuitlab
    head_notes = trips["head"].manifest["fold"]["notes"]
    assert any("KV group" in note and "untouched" in note for note in head_notes)


def test_manifest_says_what_was_done(round_trips):
    trip = round_trips("tiny-llama-gqa-4/2")["subspace"]
    data = trip.manifest
    assert data["interventions"][0]["type"] == "SubspaceAblation"
    assert set(data["versions"]) >= {"torch", "transformers", "transformer-lens", "circuitlab"}
    assert data["parity"]["passed"] and data["directions"]["hash"]
    assert "model.safetensors" in data["files"] and "config.json" in data["files"]
    assert data["files"][EDITS] == data["edits"]["sha256"]
    assert data["edits"]["summary"][0].startswith("WriterProjection(writer='embed'")


def test_the_export_carries_its_edits_and_refolds_without_the_directions(tiny_models, tmp_path):
    model = tiny_models["tiny-llama-gqa-4/2"]
    n, d = model.n_layers, model.facts.d_model
    saved = tmp_path / "directions"
    DirectionSet("diff_means", orthonormal(d, 2)[None].expand(n, -1, -1).clone(),
                 torch.ones(n, 2)).save(saved)  # fmt: skip
    ref = DirectionRef.from_folder(saved)
    interventions = [
        DirectionalAblation(ref, index=0.0, embed=0.5),
        ActivationAddition(ref, strength=2.0, layers=(0, n // 2), index=0.0, component=1),
    ]
    folded = fold(model, interventions)
    _export_one(model, interventions, tmp_path / "out")
    shutil.rmtree(saved)  # a stranger has the export, not our cache
    data = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert data["files"][EDITS] == data["edits"]["sha256"]
    edits = load_edits(tmp_path / "out" / EDITS)
    assert [type(e) for e in edits].count(ResidualAddition) == 2
    again = plan_fold_edits(model, edits).fold_state_dict(fold(model, []).state_dict)
    assert set(again) == set(folded.state_dict)
    for key in folded.edited:
        assert torch.equal(again[key], folded.state_dict[key]), key


@dataclasses.dataclass(frozen=True)
class _AttentionShift:
    """A test-only intervention type: project ``direction`` out of one layer's attention
    output and add ``shift`` times it to the embedding stream. Its only circuitlab code is
    the plan function below; the hooks and the fold know nothing of it."""

    direction: tuple[float, ...]
    layer: int
    shift: float

    foldable = True


@planner(_AttentionShift)
def _plan_attention_shift(model, iv: _AttentionShift) -> list:
    u = torch.tensor(iv.direction, dtype=torch.float64)
    u = u / u.norm()
    hook = writer_hook(model, "attn", iv.layer)
    one = torch.ones(1, dtype=torch.float64)
    return [
        WriterProjection("attn", iv.layer, hook, u[None], one),
        ResidualAddition(0, iv.shift * u),
    ]


def test_a_new_intervention_type_needs_only_a_plan_function(tiny_models):
    for arch in ("tiny-llama-gqa-4/2", "tiny-gemma3-mqa"):
        model = tiny_models[arch]
        u = orthonormal(model.facts.d_model, 1, seed=4)[0]
        iv = _AttentionShift(tuple(u.tolist()), layer=1, shift=3.0)
        hf = fold(model, [iv]).build()
        ref = reference(model, [iv], HELD_OUT_PROMPTS[:4])
        parity = compare(ref, *run_plain(hf, ref))
        assert parity.max_abs_logit_diff < 1e-4 and parity.greedy_agree == 4, arch
        assert _effect(model, ref) > 1e-2, arch


# --------------------------------------------------------------------------------- refusals
def _ref(model) -> DirectionRef:
    return DirectionRef.inline(orthonormal(model.facts.d_model, 1)[0])


def test_inference_only_interventions_are_refused_with_their_alternative(tiny_models):
    model = tiny_models["tiny-llama-gqa-4/2"]
    ablation = DirectionalAblation(_ref(model), index=0.0)
    with pytest.raises(ExportError, match="Nearest exact alternative: SubspaceAblation"):
        fold(model, [ConeRouting(_ref(model))])
    dynamic = DynamicStrength(ablation, layer=1, zero_at=0.0, one_at=1.0)
    with pytest.raises(ExportError, match="Nearest exact alternative: DirectionalAblation"):
        fold(model, [dynamic])
    last = ActivationAddition(_ref(model), strength=1.0, layers=(1,), index=0.0, positions="last")
    with pytest.raises(ExportError, match="positions='all'"):
        fold(model, [last])


def test_addition_past_the_embedding_is_refused_on_sandwich_norms(tiny_models):
    model = tiny_models["tiny-gemma3-mqa"]
    addition = ActivationAddition(_ref(model), strength=1.0, layers=(1,), index=0.0)
    with pytest.raises(ExportError, match="only layer 0"):
        fold(model, [addition])


def test_a_kv_edit_validated_for_one_query_head_is_refused(tiny_models):
    model = tiny_models["tiny-llama-gqa-4/2"]
    basis = torch.zeros(1, model.facts.d_model, dtype=torch.float64)
    kv = HeadProjection(1, 3, "blocks.1.attn.hook_v", basis, basis[:, 0])
    with pytest.raises(ExportError, match=r"KV group 1, read by query heads \[2, 3\]"):
        plan_fold_edits(model, [kv])


def test_verify_fails_loudly_on_wrong_weights(tiny_models):
    model = tiny_models["tiny-llama-mha-untied"]
    interventions = example_interventions(model, "directional")
    folded = fold(model, interventions).build()
    with torch.no_grad():
        folded.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    with pytest.raises(ExportError, match="does not match"):
        verify(model, interventions, folded, HELD_OUT_PROMPTS[:4])


def test_composed_interventions_fold_in_order(tiny_models):
    model = tiny_models["tiny-llama-gqa-4/2"]
    interventions = [
        *example_interventions(model, "addition"),
        *example_interventions(model, "directional"),
        *example_interventions(model, "head"),
    ]
    folded = fold(model, interventions).build()
    parity = verify(model, interventions, folded, HELD_OUT_PROMPTS[:8])
    assert parity.max_abs_logit_diff < 1e-4 and parity.greedy_agree == 8


# ------------------------------------------------------------------------ files and folders
def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_interrupted_export_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    import circuitlab.export.stream as stream

    model = tiny_models["tiny-llama-mha-untied"]
    real_write, written = stream._write_tensor, []

    def fail_after_first_tensor(out, key, *args, **kwargs):
        real_write(out, key, *args, **kwargs)
        written.append(key)
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(stream, "_write_tensor", fail_after_first_tensor)
    before = _listing(tmp_path)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        export(
            model,
            example_interventions(model, "directional"),
            tmp_path / "out",
            ExportOptions(prompts=HELD_OUT_PROMPTS[:2]),
        )
    assert len(written) == 1  # it did die after writing a tensor
    assert not (tmp_path / "out").exists() and _listing(tmp_path) == before


def test_existing_folders_and_the_source_are_protected(tiny_models, tiny_paths, tmp_path):
    kind = "tiny-llama-mha-untied"
    model = tiny_models[kind]
    interventions = example_interventions(model, "head")
    out = tmp_path / "out"
    quick = ExportOptions(prompts=HELD_OUT_PROMPTS[:2], max_new_tokens=4)
    first = export(model, interventions, out, quick)
    with pytest.raises(ExportError, match="already exists"):
        export(model, interventions, out, quick)
    forced = dataclasses.replace(quick, force=True)
    second = export(model, interventions, out, forced)
    assert second.manifest["created_utc"] != first.manifest["created_utc"]
    assert json.loads((out / MANIFEST).read_text())["created_utc"] == second.manifest["created_utc"]
    assert _listing(tmp_path) == ["out"]  # nothing left beside it
    for target in (tiny_paths[kind], tiny_paths[kind].parent):
        with pytest.raises(ExportError, match="source model"):
            export(model, interventions, target, forced)


# ----------------------------------------------------------------------------- command line
def test_cli_exports_and_refuses_in_one_line(tiny_paths, tmp_path, capsys):
    from circuitlab.cli import main

    path = tiny_paths["tiny-llama-gqa-4/2"]
    model = HookedModel.load(str(path))
    ablation = save_intervention(example_interventions(model, "subspace")[0], tmp_path / "s.json")
    argv = ["export", str(path), "--intervention", str(ablation), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert (tmp_path / "o" / MANIFEST).is_file() and "max |Δlogit|" in capsys.readouterr().out
    card = (tmp_path / "o" / "README.md").read_text()
    assert "## Parity" in card and "SubspaceAblation(" in card and "16/16" in card
    cones = save_intervention(ConeRouting(_ref(model)), tmp_path / "c.json")
    argv = ["export", str(path), "--intervention", str(cones), "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "SubspaceAblation" in capsys.readouterr().err and not (tmp_path / "c").exists()
