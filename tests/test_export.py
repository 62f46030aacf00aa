"""ONNX export (`zsad.export`, `zsad export`): onnxruntime equals torch within 1e-4 for every exportable
model, with a dynamic batch axis and the text features as constants; refused models exit 2."""

import json

import numpy as np
import pytest
import torch

from zsad import AdaCLIPModel, AnomalyCLIPModel, CraneModel, DACLIPModel, HeadCLIPModel, WinCLIPModel, ZeroShotCLIPModel
from zsad.cli import main

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need the export extra: pip install 'zsad[export]'")
onnx = pytest.importorskip("onnx", reason="ONNX export tests need the export extra: pip install 'zsad[export]'")
pytest.importorskip("onnxscript", reason="ONNX export tests need the export extra: pip install 'zsad[export]'")

from zsad.export import export_onnx  # noqa: E402

SIZE = 32
TOL = 1e-4


def trained_stand_in(model):
    """Random non-zero adapters (as after training), so learned prompts matter in the comparison."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize(
    ("model_class", "options"),
    [
        (ZeroShotCLIPModel, {}),
        (AnomalyCLIPModel, {}),
        (CraneModel, {}),
        (HeadCLIPModel, {}),  # static head weights, joint image score
        (HeadCLIPModel, {"head_weight_mode": "dynamic"}),  # head weights from each image's prompt-free pass
        (WinCLIPModel, {}),  # eager CPU runs chunk the windows (batch 3), the exported graph does not
        (DACLIPModel, {"deep_prompt_layers": []}),  # routed visual prompts and DAKA; text fixed
    ],
    ids=["zsad_clip", "anomalyclip", "crane", "headclip", "headclip-dynamic", "winclip", "daclip-fixed-text"],
)
def test_onnxruntime_equals_torch(model_class, options, tiny_backbone, tmp_path, capsys):
    model = trained_stand_in(model_class.from_backbone(tiny_backbone, image_size=SIZE, **options))
    model.config.image_threshold = 0.42
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", "--format", "onnx", str(tmp_path / "ckpt"), str(tmp_path / "onnx")]) == 0
    path = tmp_path / "onnx" / "model.onnx"
    assert capsys.readouterr().out.strip().endswith(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]  # no text input: the text is baked in
    assert [o.name for o in session.get_outputs()] == ["pred_scores", "anomaly_maps"]
    for batch in (1, 3):  # the example batch of the export is 2: the batch axis is dynamic
        pixels = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(pixel_values=pixels)
        scores, maps = session.run(None, {"pixel_values": pixels.numpy()})
        assert scores.shape == (batch,) and maps.shape == (batch, SIZE, SIZE)
        assert np.abs(scores - expected.pred_scores.numpy()).max() <= TOL
        assert np.abs(maps - expected.anomaly_maps.numpy()).max() <= TOL
    meta = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert meta["image_size"] == SIZE and meta["model_type"] == model.config.model_type
    assert meta["image_threshold"] == 0.42 and meta["pixel_threshold"] is None
    assert json.loads((tmp_path / "onnx" / "preprocessor_config.json").read_text())["image_size"] == SIZE


def test_models_with_image_dependent_text_are_refused(tiny_backbone, tmp_path, capsys):
    adaclip = AdaCLIPModel.from_backbone(tiny_backbone, image_size=SIZE, prompt_depth=1)
    adaclip.save_pretrained(tmp_path / "adaclip")
    assert main(["export", str(tmp_path / "adaclip"), str(tmp_path / "no")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("zsad export: error: AdaCLIPModel cannot be exported to ONNX")
    assert not (tmp_path / "no" / "model.onnx").exists()

    crane = CraneModel.from_backbone(tiny_backbone, image_size=SIZE, prompt_conditioning="always")
    with pytest.raises(ValueError, match="conditioned on each image"):
        export_onnx(crane, tmp_path / "crane")

    daclip = DACLIPModel.from_backbone(tiny_backbone, image_size=SIZE)
    daclip.save_pretrained(tmp_path / "daclip")
    assert main(["export", str(tmp_path / "daclip"), str(tmp_path / "no")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "DACLIPModel cannot be exported to ONNX: its deep text tokens are mixed per image" in err[0]
