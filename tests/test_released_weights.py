"""`zsad import-checkpoint`: the authors' released files -> adapter-only zsad checkpoints with cards.

The five real Crane / Crane+ files in ../shared/checkpoints/crane are imported onto a random backbone of
matching text widths (768 wide, 9 text layers: the deep tokens enter layers 2-9; a 2-layer, 64-wide vision
tower at patch 14 keeps the forward fast, since no released Crane tensor depends on the vision tower) with
the real CLIP tokenizer; those tests skip when ../shared is absent. AnomalyCLIP and AdaCLIP releases are
not available: their files are written here in the documented layouts with random tensors, at the tiny
backbone's widths. Every expected tensor is computed here from the file by the documented transform.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, CLIPModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

import zsad
from zsad.cli import main
from zsad.hub.released.anomalyclip_crane import check_embedding_buffers
from zsad.hub.released.safe_loading import CheckpointImportError
from zsad.testing import save_tiny_backbone

SHARED = Path(__file__).resolve().parents[2] / "shared"
CRANE_FILES = SHARED / "checkpoints" / "crane"
CLIP_TOKENIZER = SHARED / "clip-tokenizer"
needs_shared = pytest.mark.skipif(not CRANE_FILES.is_dir() or not CLIP_TOKENIZER.is_dir(), reason="../shared is absent")

# file, method, expected soft_mean, a dataset the card must report (with its image AUROC), one it must not
REAL_FILES = [
    ("trained_on_mvtec_crane/epoch_5.pth", "crane", True, ("VisA", 85.3), "MVTec AD"),
    ("trained_on_visa_crane/epoch_5.pth", "crane", True, ("MVTec AD", 93.8), "VisA"),
    ("trained_on_mvtec_cranep/epoch_5.pth", "crane+", False, ("VisA", 83.6), "HeadCT"),
    ("trained_on_mvtec_cranep/epoch_1.pth", "crane+", True, ("HeadCT", 94.6), "VisA"),
    ("trained_on_visa_cranep/epoch_5.pth", "crane+", False, ("MVTec AD", 93.9), "VisA"),
]
PLACEHOLDERS = " ".join(["X"] * 12)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def model_index(path: Path) -> dict[tuple[str, str, str], float]:
    """(dataset, task type, metric type) -> value from the card's YAML, loaded with huggingface_hub."""
    card = ModelCard.load(path / "README.md")
    values = {}
    for entry in card.data.to_dict()["model-index"][0]["results"]:
        for metric in entry["metrics"]:
            values[(entry["dataset"]["name"], entry["task"]["type"], metric["type"])] = metric["value"]
        assert "reported by the authors, not measured by zsad" in entry["source"]["name"]
    return values


@pytest.fixture(scope="module")
def dino14(tmp_path_factory):
    torch.manual_seed(1)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                       patch_size=14, image_size=28, num_register_tokens=4)
    path = tmp_path_factory.mktemp("dino14")
    Dinov2WithRegistersModel(config).save_pretrained(path)
    return path


def documented_transform(state):
    """docs/released_weights.md: contexts stacked (normal = pos, anomaly = neg), deep tokens stacked."""
    return {
        "prompt_learner.context": torch.stack([state["ctx_pos"].reshape(12, -1), state["ctx_neg"].reshape(12, -1)]),
        "prompt_learner.deep_tokens": torch.stack([state[f"compound_prompts_text.{i}"] for i in range(8)]),
    }


@needs_shared
@pytest.mark.parametrize(("name", "method", "soft_mean", "reported", "absent"), REAL_FILES)
def test_real_crane_files_import(name, method, soft_mean, reported, absent, vitl_text_backbone, dino14, tmp_path, capsys):
    file = CRANE_FILES / name
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", method, file, out, "--backbone", vitl_text_backbone,
                                   "--dino-backbone", dino14)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "43,008 values" in stdout
    # A random backbone's token table is not the one the files were trained with: one warning line.
    assert stderr.count("\n") == 1 and "token-embedding buffers differ" in stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "modeling_zsad.py", "preprocessor_config.json"
    ]

    state = torch.load(file, map_location="cpu", weights_only=True)["prompt_learner"]
    written = load_file(out / "model.safetensors")
    expected = documented_transform(state)
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert written[key].dtype == torch.float32 and torch.equal(written[key], tensor), key

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "zsad_crane" and config["dino_attention"] == (method == "crane+")
    assert config["soft_mean"] is soft_mean and config["feature_layers"] == [2] and config["image_size"] == 518
    assert config["backbone_hidden_act"] == "quick_gelu" and config["prompt_conditioning"] == "train"
    assert config["guided_value_source"] == "post_attention"
    for ids, side in zip(config["prompt_token_ids"], ("pos", "neg")):
        row = state[f"tokenized_prompts_{side}"].reshape(-1).tolist()
        assert row == ids + [0] * (77 - len(ids)) and ids[1:13] == [343] * 12

    model = AutoModel.from_pretrained(out).eval()
    assert type(model) is zsad.CraneModel and (model.dino is not None) == (method == "crane+")
    for key, tensor in expected.items():
        assert torch.equal(model.state_dict()[key], tensor)
    assert model.prompt_tokens.input_ids[0].tolist() == state["tokenized_prompts_pos"].reshape(-1).tolist()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 56, 56))
    assert outputs.anomaly_maps.shape == (2, 56, 56) and torch.isfinite(outputs.anomaly_maps).all()
    assert len(outputs.patch_logits) == (2 if method == "crane+" else 1)

    values = model_index(out)
    dataset, image_auroc = reported
    assert values[(dataset, "image-classification", "roc_auc")] == image_auroc
    assert not any(key[0] == absent for key in values)
    assert ModelCard.load(out / "README.md").data.license == "mit"


@needs_shared
def test_embedding_buffers_against_the_backbone_table():
    """The buffers match a table holding their rows (difference 0) and not a random one; inconsistent
    buffers are refused without any backbone."""
    state = torch.load(CRANE_FILES / "trained_on_visa_crane" / "epoch_5.pth", map_location="cpu", weights_only=True)["prompt_learner"]
    ids = [state[f"tokenized_prompts_{s}"].reshape(-1) for s in ("pos", "neg")]
    prompt_ids = [row[: int(row.argmax()) + 1].tolist() for row in ids]
    torch.manual_seed(0)
    table = torch.randn(49408, 768)
    assert check_embedding_buffers(state, prompt_ids, table, Path("f")) > 0.1
    table[49406] = state["token_prefix_pos"].reshape(-1)
    for side, row in zip(("pos", "neg"), ids):
        table[row[13:]] = state[f"token_suffix_{side}"].reshape(64, 768)
    assert check_embedding_buffers(state, prompt_ids, table, Path("f")) == 0.0
    broken = dict(state, token_suffix_neg=state["token_suffix_neg"].clone())
    broken["token_suffix_neg"][0, 0, 5] += 1  # a padding row that no longer equals the others
    with pytest.raises(CheckpointImportError, match="disagree for token id 0"):
        check_embedding_buffers(broken, prompt_ids, table, Path("f"))


# ------------------------------------------------------------------------------------- written layouts
@pytest.fixture(scope="module")
def tiny_backbone_9(tmp_path_factory):
    """Tiny CLIP (width 32) with 9 text layers, so the 8 deep-token layers 2-9 exist."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-9"), text_layers=9)


def object_agnostic_file(backbone: Path, path: Path, *, projections: bool, seed: int = 0) -> dict:
    """A file in AnomalyCLIP's (projections=True) or Crane's layout (docs/released_weights.md) with
    random learnable tensors and the buffers the reference computes from the backbone's tokenizer and table."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    table = CLIPModel.from_pretrained(backbone).text_model.embeddings.token_embedding.weight.detach()
    width = table.shape[1]
    state = {"ctx_pos": torch.randn(1, 1, 12, width), "ctx_neg": torch.randn(1, 1, 12, width)}
    for side, words in (("pos", "object."), ("neg", "damaged object.")):
        ids = tokenizer(f"{PLACEHOLDERS} {words}")["input_ids"]
        padded = torch.tensor(ids + [0] * (77 - len(ids)), dtype=torch.int32)
        state[f"token_prefix_{side}"] = table[padded[:1]].reshape(1, 1, 1, width).clone()
        state[f"token_suffix_{side}"] = table[padded[13:]].reshape(1, 1, 64, width).clone()
        state[f"tokenized_prompts_{side}"] = padded.reshape(1, 1, 77)
    for i in range(8):
        state[f"compound_prompts_text.{i}"] = torch.randn(4, width)
    if projections:  # the dead Linear(width -> 896) layers
        for i in range(8):
            state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width)
            state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"prompt_learner": state}, path)
    return state


def test_anomalyclip_file_imports(tiny_backbone_9, tmp_path, capsys, monkeypatch):
    file = tmp_path / "checkpoints" / "9_12_4_multiscale_visa" / "epoch_15.pth"  # trained on MVTec AD
    state = object_agnostic_file(tiny_backbone_9, file, projections=True)
    out = tmp_path / "out"
    monkeypatch.chdir(Path(tiny_backbone_9).parent)  # a relative backbone folder is stored absolute
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", "anomalyclip", file, out, "--backbone", Path(tiny_backbone_9).name)
    assert code == 0 and stderr == "", stderr  # buffers equal the backbone's table: no warning
    monkeypatch.chdir(tmp_path)
    written = load_file(out / "model.safetensors")
    assert written.keys() == {"prompt_learner.context", "prompt_learner.deep_tokens"}  # projections dropped
    for key, tensor in documented_transform(state).items():
        assert torch.equal(written[key], tensor)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "zsad_anomalyclip" and config["feature_layers"] == [4]
    assert config["backbone_name_or_path"] == str(Path(tiny_backbone_9).resolve())
    assert config["backbone_hidden_act"] == "quick_gelu" and not config["global_post_layernorm"]
    model = AutoModel.from_pretrained(out).eval()
    assert torch.equal(model.prompt_learner.context, documented_transform(state)["prompt_learner.context"])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 28, 28)).anomaly_maps).all()
    values = model_index(out)
    assert values[("VisA", "image-classification", "roc_auc")] == 82.1
    assert values[("VisA", "image-segmentation", "aupro")] == 87.0
    assert values[("TN3K", "image-segmentation", "roc_auc")] == 81.5 and ("MVTec AD", "image-classification", "roc_auc") not in values
    card = (out / "README.md").read_text()
    assert "trained on the MVTec AD test split; zero-shot on other datasets" in card
    assert "https://github.com/zqhang/AnomalyCLIP" in card and "not measured by zsad" in card


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("ctx_neg"), "missing key 'ctx_neg'"),
        (lambda s: s.update(ctx_pos=torch.zeros(1, 1, 12, 31)), r"key 'ctx_pos' has shape \(1, 1, 12, 31\), expected \(1, 1, 12, 32\)"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
        (lambda s: s["tokenized_prompts_neg"].view(-1).__setitem__(14, 5), "tokenized_prompts_neg differs .* position 14"),
        (lambda s: s["token_prefix_neg"].add_(1), "token_prefix_pos and token_prefix_neg differ"),
    ],
)
def test_bad_files_are_refused_in_one_line(change, message, tiny_backbone_9, tmp_path, capsys):
    file = tmp_path / "trained_on_mvtec_crane" / "epoch_5.pth"
    state = object_agnostic_file(tiny_backbone_9, file, projections=False)
    change(state)
    torch.save({"prompt_learner": state}, file)
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", "crane", file, tmp_path / "out", "--backbone", tiny_backbone_9)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("zsad import-checkpoint: error: ") and str(file) in stderr
    assert re.search(message, stderr), stderr
    assert not (tmp_path / "out").exists()


class RunsCodeWhenUnpickled:
    """Unpickling this object calls `open(marker, "w")`, i.e. creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_refused_and_never_runs(tiny_backbone_9, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    file = tmp_path / "trained_on_mvtec_crane" / "epoch_5.pth"
    file.parent.mkdir()
    torch.save({"prompt_learner": {"ctx_pos": torch.zeros(1)}, "payload": RunsCodeWhenUnpickled(marker)}, file)
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", "crane", file, tmp_path / "out", "--backbone", tiny_backbone_9)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "refused" in stderr and "weights_only=True" in stderr and "Unsupported global: GLOBAL io.open" in stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_not_a_checkpoint_and_unknown_training_set(tiny_backbone_9, tmp_path, capsys):
    junk = tmp_path / "epoch_5.pth"
    junk.write_bytes(b"not a pickle")
    code, _, stderr = run_cli(capsys, "import-checkpoint", "crane", junk, tmp_path / "out", "--backbone", tiny_backbone_9,
                              "--trained-on", "mvtec")
    assert code == 2 and "not a PyTorch checkpoint" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli(capsys, "import-checkpoint", "crane", junk, tmp_path / "out", "--backbone", tiny_backbone_9)
    assert code == 2 and "--trained-on mvtec|visa" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli(capsys, "import-checkpoint", "crane", junk, tmp_path / "out", "--trained-on", "kolektor")
    assert code == 2 and "--trained-on 'kolektor'" in stderr


# --------------------------------------------------------------------------------------------- AdaCLIP
@pytest.fixture(scope="module")
def adaclip_backbone(tmp_path_factory):
    """8 vision layers (taps 2/4/6/8) and 4 text layers, widths 32."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-clip-ada"), vision_layers=8, text_layers=4)


def adaclip_file(path: Path, text_width: int, vision_width: int, embed: int) -> dict:
    """AdaCLIP's flat `clip_model.*` layout (docs/released_weights.md), random tensors."""
    torch.manual_seed(2)
    state = {}
    for j in range(4):
        state[f"clip_model.text_prompter.static_prompts.{j}"] = torch.randn(5, text_width)
        state[f"clip_model.visual_prompter.static_prompts.{j}"] = torch.randn(5, vision_width)
        state[f"clip_model.patch_token_layer.head.{j}.weight"] = torch.randn(embed, vision_width)
        state[f"clip_model.patch_token_layer.head.{j}.bias"] = torch.randn(embed)
    state["clip_model.cls_token_layer.head.0.weight"] = torch.randn(embed, embed)
    state["clip_model.cls_token_layer.head.0.bias"] = torch.randn(embed)
    for i in range(5):
        state[f"clip_model.dynamic_visual_prompt_generator.head.{i}.weight"] = torch.randn(vision_width, embed) * 0.1
        state[f"clip_model.dynamic_visual_prompt_generator.head.{i}.bias"] = torch.randn(vision_width)
        state[f"clip_model.dynamic_text_prompt_generator.head.{i}.weight"] = torch.randn(text_width, embed) * 0.1
        state[f"clip_model.dynamic_text_prompt_generator.head.{i}.bias"] = torch.randn(text_width)
    torch.save(state, path)
    return state


def test_adaclip_file_imports(adaclip_backbone, tmp_path, capsys):
    file = tmp_path / "pretrained_mvtec_colondb.pth"
    state = adaclip_file(file, 32, 32, 32)
    assert len(state) == 38
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "import-checkpoint", "adaclip", file, out, "--backbone", adaclip_backbone)
    assert code == 2 and "--trained-on mvtec+colondb|visa+clinicdb" in stderr  # the name does not settle it
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", "adaclip", file, out, "--backbone", adaclip_backbone,
                                   "--trained-on", "mvtec+colondb")
    assert code == 0 and stderr == "", stderr
    p = "clip_model."
    expected = {
        "vision_prompts.static": torch.stack([state[f"{p}visual_prompter.static_prompts.{j}"] for j in range(4)]),
        "text_prompts.static": torch.stack([state[f"{p}text_prompter.static_prompts.{j}"] for j in range(4)]),
        "vision_prompts.generator.weight": torch.cat([state[f"{p}dynamic_visual_prompt_generator.head.{i}.weight"] for i in range(5)]),
        "vision_prompts.generator.bias": torch.cat([state[f"{p}dynamic_visual_prompt_generator.head.{i}.bias"] for i in range(5)]),
        "text_prompts.generator.weight": torch.cat([state[f"{p}dynamic_text_prompt_generator.head.{i}.weight"] for i in range(5)]),
        "text_prompts.generator.bias": torch.cat([state[f"{p}dynamic_text_prompt_generator.head.{i}.bias"] for i in range(5)]),
        "projections.image.weight": state[f"{p}cls_token_layer.head.0.weight"],
        "projections.image.bias": state[f"{p}cls_token_layer.head.0.bias"],
        **{f"projections.patch.{k}.{part}": state[f"{p}patch_token_layer.head.{k}.{part}"] for k in range(4) for part in ("weight", "bias")},
    }
    written = load_file(out / "model.safetensors")
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key
    config = json.loads((out / "config.json").read_text())
    assert config["feature_layers"] == [2, 4, 6, 8] and config["backbone_hidden_act"] == "gelu"
    assert config["clip_config"]["vision_config"]["hidden_act"] == config["clip_config"]["text_config"]["hidden_act"] == "gelu"
    model = AutoModel.from_pretrained(out).eval()
    # dynamic token i of the generator = head i of the file applied to the prompt-free embedding
    embedding = torch.randn(1, 32)
    tokens = model.vision_prompts.generator(embedding).view(1, 5, 32)
    head2 = embedding @ state[f"{p}dynamic_visual_prompt_generator.head.2.weight"].t() + state[f"{p}dynamic_visual_prompt_generator.head.2.bias"]
    assert torch.allclose(tokens[:, 2], head2, atol=1e-5)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 28, 28), categories="object").anomaly_maps).all()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and "model-index" not in card.data.to_dict()
    assert "MVTec AD + ColonDB" in card.text and "set_class_names" in card.text


def test_adaclip_extra_key_is_refused(adaclip_backbone, tmp_path, capsys):
    file = tmp_path / "w.pth"
    state = adaclip_file(file, 32, 32, 32)
    state["clip_model.patch_token_layer.head.4.weight"] = torch.zeros(32, 32)  # a fifth tap
    torch.save(state, file)
    code, _, stderr = run_cli(capsys, "import-checkpoint", "adaclip", file, tmp_path / "out", "--backbone", adaclip_backbone,
                              "--trained-on", "visa+clinicdb")
    assert code == 2 and "unexpected key 'clip_model.patch_token_layer.head.4.weight'" in stderr and stderr.count("\n") == 1


def test_publish_released_turns_a_release_folder_into_push_ready_folders(tiny_backbone_9, adaclip_backbone, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_released", Path(__file__).resolve().parents[1] / "examples" / "publish_released.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    released = tmp_path / "released"
    object_agnostic_file(tiny_backbone_9, released / "AnomalyCLIP" / "checkpoints" / "9_12_4_multiscale_visa" / "epoch_15.pth", projections=True)
    object_agnostic_file(tiny_backbone_9, released / "AnomalyCLIP" / "checkpoints" / "9_12_4_multiscale" / "epoch_15.pth", projections=True, seed=1)
    out = tmp_path / "out"
    assert script.main([str(released), str(out), "--backbone", str(tiny_backbone_9), "--org", "acme"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["anomalyclip-vit-large-patch14-336-trained-on-mvtec", "anomalyclip-vit-large-patch14-336-trained-on-visa"]
    card = (out / names[1] / "README.md").read_text()
    assert f'AutoModel.from_pretrained("acme/{names[1]}")' in card and "trained on the VisA test split; zero-shot on MVTec AD" in card
    assert model_index(out / names[1]) == {
        ("MVTec AD", "image-classification", "roc_auc"): 91.5, ("MVTec AD", "image-classification", "average_precision"): 96.2,
        ("MVTec AD", "image-segmentation", "roc_auc"): 91.1, ("MVTec AD", "image-segmentation", "aupro"): 81.4,
    }
    capsys.readouterr()
    code, stdout, _ = run_cli(capsys, "push", out / names[0], f"acme/{names[0]}", "--dry-run")
    assert code == 0 and all(name in stdout for name in ("config.json", "model.safetensors", "README.md", "modeling_zsad.py"))
    ada = tmp_path / "pretrained_all.pth"
    adaclip_file(ada, 32, 32, 32)
    assert script.main([str(tmp_path / "empty"), str(tmp_path / "out2"), "--backbone", str(adaclip_backbone),
                        "--adaclip", f"{ada}=visa+clinicdb"]) == 0
    assert (tmp_path / "out2" / "adaclip-vit-large-patch14-336-trained-on-visa-and-clinicdb" / "model.safetensors").is_file()
    assert script.main([str(tmp_path / "empty"), str(tmp_path / "out3")]) == 2
    assert "no released checkpoint found" in capsys.readouterr().err


def test_an_epoch_the_authors_do_not_evaluate_gets_no_reported_numbers(tiny_backbone_9, tmp_path, capsys):
    file = tmp_path / "trained_on_visa_cranep" / "epoch_1.pth"  # Crane+'s epoch 1 is evaluated only for the MVTec AD run
    object_agnostic_file(tiny_backbone_9, file, projections=False)
    out = tmp_path / "out"
    # patch 4: DINOv2 ViT-B/14 cannot give the same patch grid
    code, _, stderr = run_cli(capsys, "import-checkpoint", "crane+", file, out, "--backbone", tiny_backbone_9)
    assert code == 2 and "Crane+ cannot run on the backbone" in stderr and "patch size" in stderr and stderr.count("\n") == 1
    backbone14 = save_tiny_backbone(tmp_path / "clip14", text_layers=9, patch_size=14, image_size=28)
    object_agnostic_file(backbone14, file, projections=False)
    code, stdout, stderr = run_cli(capsys, "import-checkpoint", "crane+", file, out, "--backbone", backbone14)
    assert code == 0, stderr
    assert "0 datasets of reported numbers" in stdout
    card = ModelCard.load(out / "README.md")
    assert "model-index" not in card.data.to_dict()
    assert "evaluates epoch 5 of this training run; this file is epoch 1" in card.text
    config = json.loads((out / "config.json").read_text())
    assert config["dino_config"]["num_register_tokens"] == 4  # the default DINOv2's architecture, offline
    code, _, stderr = run_cli(capsys, "import-checkpoint", "crane+", file, out, "--backbone", backbone14)
    assert code == 2 and "already exists and is not an empty folder" in stderr  # never overwritten
    assert [p.name for p in tmp_path.iterdir() if ".zsad-tmp-" in p.name] == []
