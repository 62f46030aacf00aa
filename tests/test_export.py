"""Deployment exports (`zsad.export`, `zsad export`): every method to ONNX (float32 and float16) and OpenVINO,
each run compared with the PyTorch model on the tiny backbone; the thresholds are graph inputs whose
defaults are the calibrated values, and the labels and masks are the graph's own outputs.

With `ZSAD_EXPORT_MATRIX=<file>` set, the measured differences are written there as the markdown table
of docs/inference.md (the export matrix comes from these tests' own results)."""

import json
import os

import numpy as np
import pytest
import torch

from zsad import AdaCLIPModel, AnomalyCLIPModel, CraneModel, DACLIPModel, HeadCLIPModel, WinCLIPModel, ZeroShotCLIPModel
from zsad.cli import main

ort = pytest.importorskip("onnxruntime", reason="export tests need the export extra: pip install 'zsad[export]'")
onnx = pytest.importorskip("onnx", reason="export tests need the export extra: pip install 'zsad[export]'")
pytest.importorskip("onnxscript", reason="export tests need the export extra: pip install 'zsad[export]'")

from zsad.export import ExportError, export_onnx  # noqa: E402

SIZE = 32
# Stated tolerances (max absolute difference of scores and maps against the float32 PyTorch model).
TOLERANCES = {"float32": 1e-4, "float16": 1e-2}
MODELS = {
    "ZeroShotCLIP": (ZeroShotCLIPModel, {}),
    "AnomalyCLIP": (AnomalyCLIPModel, {}),
    "Crane": (CraneModel, {}),
    "Crane (prompt_conditioning='always')": (CraneModel, {"prompt_conditioning": "always"}),
    "HeadCLIP": (HeadCLIPModel, {}),
    "HeadCLIP (dynamic head weights)": (HeadCLIPModel, {"head_weight_mode": "dynamic"}),
    "WinCLIP": (WinCLIPModel, {}),
    "DA-CLIP": (DACLIPModel, {}),
    "DA-CLIP (deep_prompt_layers=[])": (DACLIPModel, {"deep_prompt_layers": []}),
    # 3 Lloyd iterations instead of 20 keep the unrolled K-means (and the test) short; the graph is the same.
    "AdaCLIP": (AdaCLIPModel, {"prompt_depth": 2, "hsf_kmeans_iterations": 3}),
}
CASES = [(name, "onnx", "float32") for name in MODELS] + [
    ("AnomalyCLIP", "onnx", "float16"),
    ("Crane (prompt_conditioning='always')", "onnx", "float16"),
    ("AnomalyCLIP", "openvino", "float32"),
    ("AnomalyCLIP", "openvino", "float16"),
]


@pytest.fixture(scope="module")
def export_matrix():
    """Collects each case's measured differences; written as markdown when ZSAD_EXPORT_MATRIX is set."""
    rows: dict[tuple, tuple] = {}
    yield rows
    target = os.environ.get("ZSAD_EXPORT_MATRIX")
    if target and rows:
        lines = ["| model | format | dtype | max abs. diff. scores | max abs. diff. maps | labels, masks equal |",
                 "|---|---|---|---|---|---|"]
        for (name, export_format, dtype), (scores, maps, equal) in rows.items():
            lines.append(f"| {name} | {export_format} | {dtype} | {scores:.1e} | {maps:.1e} | {equal} |")
        with open(target, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def trained_stand_in(model):
    """Random non-zero adapters (as after training), so learned prompts matter in the comparison."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.2)
    return model.eval()


def midpoint_threshold(values: np.ndarray) -> float:
    """A threshold in the widest gap between sorted values in the middle half (some values on each side)."""
    ordered = np.sort(values.ravel())
    low, high = len(ordered) // 4, max(len(ordered) * 3 // 4, len(ordered) // 4 + 1)
    index = low + int(np.argmax(np.diff(ordered)[low:high]))
    return float((ordered[index] + ordered[index + 1]) / 2)


def run_exported(export_format: str, folder, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if export_format == "onnx":
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, inputs)))
    import openvino as ov

    # OpenVINO's CPU plugin infers in bf16 where the CPU supports it unless told otherwise.
    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(inputs)
    return {next(iter(o.get_names() & {"pred_scores", "anomaly_maps", "pred_labels", "pred_masks"})): result[o]
            for o in compiled.outputs}


@pytest.mark.parametrize(("name", "export_format", "dtype"), CASES, ids=[f"{n}-{f}-{d}" for n, f, d in CASES])
def test_exported_graph_equals_torch(name, export_format, dtype, tiny_backbone, tmp_path, capsys, export_matrix):
    if export_format == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO export needs the export extra: pip install 'zsad[export]'")
    model_class, options = MODELS[name]
    model = trained_stand_in(model_class.from_backbone(tiny_backbone, image_size=SIZE, **options))
    model.config.image_threshold, model.config.pixel_threshold = 0.42, 0.5
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "export"
    argv = ["export", str(tmp_path / "ckpt"), str(out), "--format", export_format, "--dtype", dtype]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("model.onnx" if export_format == "onnx" else "openvino_model.xml")
    meta = json.loads((out / f"{export_format}_config.json").read_text())
    assert (meta["image_size"], meta["dtype"], meta["model_type"]) == (SIZE, dtype, model.config.model_type)
    assert (meta["image_threshold"], meta["pixel_threshold"]) == (0.42, 0.5)
    assert meta["text_in_graph"] == (model.constant_text_features() is None)
    assert json.loads((out / "preprocessor_config.json").read_text())["image_size"] == SIZE

    worst = [0.0, 0.0]
    equal = True
    for batch in (1, 3):  # the example batch of the export is 2: the batch axis is dynamic
        pixels = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(pixel_values=pixels)
        scores, maps = expected.pred_scores.numpy(), expected.anomaly_maps.numpy()
        image_threshold = midpoint_threshold(np.r_[scores, 0.0, 1.0])
        pixel_threshold = midpoint_threshold(maps)
        got = run_exported(export_format, out, {
            "pixel_values": pixels.numpy(),
            "image_threshold": np.array(image_threshold, np.float32),
            "pixel_threshold": np.array(pixel_threshold, np.float32),
        })
        assert got["pred_scores"].shape == (batch,) and got["anomaly_maps"].shape == (batch, SIZE, SIZE)
        worst[0] = max(worst[0], float(np.abs(got["pred_scores"] - scores).max()))
        worst[1] = max(worst[1], float(np.abs(got["anomaly_maps"] - maps).max()))
        # Decisions: the graph's outputs against the rule `>= threshold` applied here to the torch values,
        # except pixels within the tolerance of the threshold.
        assert got["pred_labels"].dtype == np.int64 and got["pred_masks"].dtype == np.bool_
        clear_labels = np.abs(scores - image_threshold) > TOLERANCES[dtype]
        assert np.array_equal(got["pred_labels"][clear_labels], (scores >= image_threshold)[clear_labels])
        clear = np.abs(maps - pixel_threshold) > TOLERANCES[dtype]
        assert clear.mean() > 0.5 and np.array_equal(got["pred_masks"][clear], (maps >= pixel_threshold)[clear])
        equal = equal and bool(clear.all() and clear_labels.all())
    export_matrix[(name, export_format, dtype)] = (*worst, "yes" if equal else "yes, away from the threshold")
    assert max(worst) <= TOLERANCES[dtype], worst


def test_thresholds_are_graph_inputs_with_calibrated_defaults(tiny_backbone, tmp_path, capsys):
    model = trained_stand_in(AnomalyCLIPModel.from_backbone(tiny_backbone, image_size=SIZE))
    pixels = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = model(pixel_values=pixels).pred_scores.numpy()
    model.config.image_threshold = midpoint_threshold(scores)  # calibrated: two images each side

    path = export_onnx(model, tmp_path / "calibrated")
    graph = onnx.load(str(path))
    defaults = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer if t.name.endswith("_threshold")}
    assert set(defaults) == {"image_threshold"}  # pixel_threshold is uncalibrated: no default
    assert defaults["image_threshold"] == np.float32(model.config.image_threshold)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "pixel_threshold"]
    assert [i.name for i in session.get_overridable_initializers()] == ["image_threshold"]
    run = {"pixel_values": pixels.numpy(), "pixel_threshold": np.array(0.5, np.float32)}
    labels = session.run(["pred_labels"], run)[0]
    assert labels.tolist() == (scores >= model.config.image_threshold).astype(int).tolist() and 0 < labels.sum() < 4
    lowered = session.run(["pred_labels"], {**run, "image_threshold": np.array(scores.min() - 1e-3, np.float32)})[0]
    assert lowered.tolist() == [1, 1, 1, 1]  # the default is overridden per run
    with pytest.raises(Exception, match="pixel_threshold"):
        session.run(None, {"pixel_values": pixels.numpy()})  # an uncalibrated threshold is a required input
    assert capsys.readouterr().err == ""


def test_class_aware_export_and_refusals(tiny_backbone, tmp_path, capsys):
    adaclip = trained_stand_in(AdaCLIPModel.from_backbone(tiny_backbone, image_size=SIZE, prompt_depth=1, hsf_kmeans_iterations=2))
    adaclip.set_class_names(["candle", "pcb"])
    adaclip.save_pretrained(tmp_path / "adaclip")
    # Two categories and none chosen: refused on one line that names the flag.
    assert main(["export", str(tmp_path / "adaclip"), str(tmp_path / "no")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "AdaCLIPModel cannot be exported as asked" in err[0] and "categories" in err[0]
    # One category: the graph scores every image with that category's prompts.
    assert main(["export", str(tmp_path / "adaclip"), str(tmp_path / "pcb"), "--class-name", "pcb"]) == 0
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = adaclip(pixel_values=pixels, categories="pcb").pred_scores.numpy()
        other = adaclip(pixel_values=pixels, categories="candle").pred_scores.numpy()
    session = ort.InferenceSession(str(tmp_path / "pcb" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["pred_scores"], {"pixel_values": pixels.numpy(), "pixel_threshold": np.array(0.5, np.float32),
                                        "image_threshold": np.array(0.5, np.float32)})[0]
    assert np.abs(got - expected).max() <= TOLERANCES["float32"] < np.abs(got - other).max()
    assert json.loads((tmp_path / "pcb" / "onnx_config.json").read_text())["class_name"] == "pcb"

    crane = CraneModel.from_backbone(tiny_backbone, image_size=SIZE)
    with pytest.raises(ExportError, match="object-agnostic"):
        export_onnx(crane, tmp_path / "crane", class_name="pcb")
    assert main(["export", str(tmp_path / "adaclip"), str(tmp_path / "x"), "--dtype", "float64"]) == 2
    assert "--dtype" in capsys.readouterr().err
