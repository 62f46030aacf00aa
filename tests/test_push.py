"""`zsad push` against an in-process mock Hub: a model folder goes up as one model-repo
commit (config, adapter safetensors, card, shim) and pulls back to identical outputs; a `zsad convert`
folder goes up as a dataset repo (parquet + a card whose counts match the data)."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard
from transformers import AutoModel

from zsad import AnomalyCLIPModel
from zsad.cli import main
from zsad.data import convert_mvtec
from zsad.data.synthetic import write_synthetic_mvtec

from mock_hub import COMMIT_OID, mock_hub  # noqa: F401  (fixture)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def model_folder(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    model = AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=28).eval()
    with torch.no_grad():
        model.prompt_learner.context.normal_(std=0.5)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_bytes(b"x")  # a training by-product: never pushed
    return model, folder


def test_model_folder_goes_up_in_one_commit_and_pulls_back_identically(mock_hub, model_folder, tmp_path, capsys):
    model, folder = model_folder
    code, out, err = run_cli(capsys, "push", folder, "acme/anomalyclip-tiny", "--private")
    assert code == 0, err
    assert mock_hub.created == [{"repo": "acme/anomalyclip-tiny", "type": "model", "visibility": "private"}]
    assert len(mock_hub.commits) == 1 and COMMIT_OID in out
    commit = mock_hub.commits[0]
    assert commit["type"] == "models" and commit["repo"] == "acme/anomalyclip-tiny"
    assert set(commit["files"]) == {"config.json", "model.safetensors", "README.md", "modeling_zsad.py", "preprocessor_config.json"}
    assert commit["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert 'AutoModel.from_pretrained("acme/anomalyclip-tiny")' in card and "<this repository>" not in card
    assert ModelCard(card).data.library_name == "transformers"
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name, content in commit["files"].items():
        (pulled / name).write_bytes(content)
    again = AutoModel.from_pretrained(pulled).eval()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before, after = model(pixels), again(pixels)
    assert torch.equal(before.pred_scores, after.pred_scores) and torch.equal(before.anomaly_maps, after.anomaly_maps)


def test_dry_run_lists_the_files_and_sends_nothing(mock_hub, model_folder, capsys):
    _, folder = model_folder
    code, out, err = run_cli(capsys, "push", folder, "acme/x", "--dry-run")
    assert code == 0 and err == ""
    assert mock_hub.requests == []
    listed = re.findall(r"^  (\S+)  \((\S+) bytes\)$", out, flags=re.M)
    assert [name for name, _ in listed] == [
        "README.md", "config.json", "model.safetensors", "modeling_zsad.py", "preprocessor_config.json"
    ]
    assert dict(listed)["model.safetensors"] == f"{(folder / 'model.safetensors').stat().st_size:,}"


def test_unpushable_folders_are_one_line_errors(mock_hub, model_folder, tmp_path, capsys):
    _, folder = model_folder
    (folder / "modeling_zsad.py").unlink()
    code, _, err = run_cli(capsys, "push", folder, "acme/x")
    assert code == 2 and "modeling_zsad.py is missing" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "push", tmp_path, "acme/x")
    assert code == 2 and "neither a zsad model folder" in err
    code, _, err = run_cli(capsys, "push", folder, "not-a-repo-id")
    assert code == 2 and "org/name" in err
    assert mock_hub.requests == []


@pytest.fixture()
def converted(tmp_path):
    source = write_synthetic_mvtec(tmp_path / "src", num_train=3, num_normal=2, num_anomalous=4, size=32,
                                   textures=("noise", "grid"))
    out = tmp_path / "converted"
    convert_mvtec(source, out)
    return source, out


def test_converted_dataset_becomes_a_dataset_repo_with_matching_counts(mock_hub, converted, capsys):
    source, folder = converted
    code, _, err = run_cli(capsys, "push", folder, "acme/synthetic-textures")
    assert code == 2 and "--license" in err and err.count("\n") == 1 and mock_hub.requests == []
    code, out, err = run_cli(capsys, "push", folder, "acme/synthetic-textures", "--license", "cc-by-4.0")
    assert code == 0, err
    assert [(c["repo"], c["type"]) for c in mock_hub.created] == [("acme/synthetic-textures", "dataset")]
    assert mock_hub.created[0]["visibility"] != "private"
    commit = mock_hub.commits[0]
    assert commit["type"] == "datasets"
    shards = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet"))
    assert shards and set(commit["files"]) == {"README.md", *shards}
    for shard in shards:
        assert commit["files"][shard] == (folder / shard).read_bytes()
    card = DatasetCard(commit["files"]["README.md"].decode())
    assert card.data.license == "cc-by-4.0" and card.data.to_dict()["configs"][0]["config_name"] == "default"
    # counts from the source layout on disk: <category>/<split>/<defect>/<image>
    expected_split, expected_group = Counter(), Counter()
    for image in source.glob("*/*/*/*.png"):
        category, split, defect = image.parts[-4:-1]
        if split == "ground_truth":
            continue
        expected_split[split] += 1
        expected_group[(split, category, "normal" if defect == "good" else "anomaly")] += 1
    assert expected_split == {"train": 6, "test": 12}
    for split, count in expected_split.items():
        assert f"| {split} | {count} |" in card.text
    rows = re.findall(r"^\| (train|test) \| (\w+) \| (normal|anomaly) \| (\d+) \|$", card.text, flags=re.M)
    assert {(s, c, label): int(n) for s, c, label, n in rows} == expected_group
    assert "| `label` | ClassLabel(normal, anomaly) |" in card.text and "cc-by-4.0" in card.text
