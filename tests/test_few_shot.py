"""Normal references (few-shot) for every zsad model: memory map, fusion, save/load, errors, AUROC gain."""

import pytest
import torch
import torch.nn.functional as F

import zsad
from zsad.clip.processing import ZSADImageProcessor
from zsad.data.synthetic import iter_synthetic_samples
from zsad.few_shot import association_scores
from zsad.metrics.classification import auroc
from zsad.testing import save_tiny_backbone


@pytest.fixture(scope="module")
def backbone16(tmp_path_factory) -> str:
    return str(save_tiny_backbone(tmp_path_factory.mktemp("tiny16"), hidden_size=16))


def _stripes(size: int = 64):
    """4 normal references, then 8 defective test images of the same striped texture, with masks."""
    processor = ZSADImageProcessor(image_size=size)
    samples = list(iter_synthetic_samples(4, 8, size=size, textures=["stripes"], seed=0))
    references = torch.stack([processor.preprocess_image(s[3]) for s in samples[:4]])
    images = torch.stack([processor.preprocess_image(s[3]) for s in samples[4:]])
    masks = torch.stack([processor.preprocess_mask(s[4]) for s in samples[4:]])
    return references, images, masks


def _naive_memory_patch_scores(model, references, images):
    """Per patch and feature map: 1/2 (1 - max cosine similarity over every reference patch), by loops."""
    with torch.no_grad():
        memory = model.image_features(references)
        test = model.image_features(images)
    per_map = []
    for bank, queries in zip(model.reference_features(memory), model.reference_features(test)):
        bank = bank.reshape(-1, bank.shape[-1])
        scores = torch.empty(queries.shape[:2])
        for b in range(queries.shape[0]):
            for n in range(queries.shape[1]):
                similarity = F.cosine_similarity(queries[b, n][None].double(), bank.double(), dim=-1)
                scores[b, n] = float((1 - similarity.max()) / 2)
        per_map.append(scores)
    return torch.stack(per_map).mean(0), test.grid_size


@pytest.mark.parametrize("model_class", [zsad.ZeroShotCLIPModel, zsad.AnomalyCLIPModel])
def test_four_references_raise_pixel_auroc(backbone16, model_class):
    torch.manual_seed(0)
    model = model_class.from_backbone(backbone16, image_size=64).eval()
    references, images, masks = _stripes()
    with torch.no_grad():
        zero_shot = model(images).anomaly_maps
        model.set_normal_references(references)
        few_shot = model(images).anomaly_maps
    before, after = auroc(zero_shot.flatten(), masks.flatten()), auroc(few_shot.flatten(), masks.flatten())
    print(f"{model_class.__name__}: pixel AUROC zero-shot {before:.3f} -> 4 references {after:.3f}")
    assert after >= before + 0.1


def test_memory_map_equals_naive_nearest_neighbours(backbone16):
    torch.manual_seed(0)
    model = zsad.AnomalyCLIPModel.from_backbone(
        backbone16, image_size=32, gaussian_sigma=0.0, reference_fusion="memory_only"
    ).eval()
    references, images = torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)
    expected_patches, grid = _naive_memory_patch_scores(model, references, images)
    expected = F.interpolate(expected_patches.view(2, 1, *grid), size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    model.set_normal_references(references)
    with torch.no_grad():
        out = model(images)
    assert len(model.normal_references.banks) == len(model.config.feature_layers)
    assert model.normal_references.banks[0].shape == (3 * grid[0] * grid[1], model.config.clip_config.projection_dim)
    assert (out.anomaly_maps - expected).abs().max() < 1e-5
    assert torch.allclose(out.pred_scores, expected.flatten(1).amax(1), atol=1e-5)


def test_chunked_search_equals_one_block():
    torch.manual_seed(0)
    queries, memory = torch.randn(2, 7, 8), F.normalize(torch.randn(50, 8), dim=-1)
    whole = association_scores(queries, memory)
    chunked = association_scores(queries, memory, max_elements=14 * 3)  # 3 memory rows at a time
    assert (whole - chunked).abs().max() < 1e-6
    naive = (1 - (F.normalize(queries, dim=-1) @ memory.t()).max(-1).values) / 2
    assert (whole - naive).abs().max() < 1e-6


def test_fusions_and_clear(backbone16):
    torch.manual_seed(0)
    model = zsad.ZeroShotCLIPModel.from_backbone(backbone16, image_size=32).eval()
    references, images = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        zero_shot = model(images)
        model.set_normal_references(references)
        mean = model(images)
        model.config.reference_fusion = "memory_only"
        memory = model(images)
        model.config.reference_fusion = "zero_shot_only"
        unchanged = model(images)
        model.config.reference_fusion = "mean"
        model.clear_normal_references()
        cleared = model(images)
    assert torch.allclose(mean.anomaly_maps, (zero_shot.anomaly_maps + memory.anomaly_maps) / 2, atol=1e-6)
    assert torch.allclose(mean.pred_scores, (zero_shot.pred_scores + memory.anomaly_maps.flatten(1).amax(1)) / 2, atol=1e-6)
    assert torch.equal(unchanged.anomaly_maps, zero_shot.anomaly_maps)
    assert torch.equal(cleared.anomaly_maps, zero_shot.anomaly_maps) and model.normal_references is None
    with pytest.raises(ValueError, match="reference_fusion must be one of"):
        zsad.ZeroShotCLIPModel.config_class(reference_fusion="max")


@pytest.mark.parametrize("model_class", [zsad.ZeroShotCLIPModel, zsad.AnomalyCLIPModel, zsad.CraneModel])
def test_batch_one_equals_batch_four(backbone16, model_class):
    torch.manual_seed(0)
    model = model_class.from_backbone(backbone16, image_size=32).eval()
    images = torch.randn(4, 3, 32, 32)
    model.set_normal_references(torch.randn(3, 3, 32, 32), batch_size=2)
    with torch.no_grad():
        together = model(images)
        alone = [model(images[i : i + 1]) for i in range(4)]
    assert (together.anomaly_maps - torch.cat([o.anomaly_maps for o in alone])).abs().max() < 1e-5
    assert (together.pred_scores - torch.cat([o.pred_scores for o in alone])).abs().max() < 1e-5


def test_reference_batch_size_does_not_change_the_memory(backbone16):
    torch.manual_seed(0)
    model = zsad.AnomalyCLIPModel.from_backbone(backbone16, image_size=32).eval()
    references = torch.randn(5, 3, 32, 32)
    one = model.set_normal_references(references, batch_size=5)
    two = model.set_normal_references(references, batch_size=2)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(one.banks, two.banks))


def test_adaclip_references_use_the_projected_features(backbone16):
    torch.manual_seed(0)
    model = zsad.AdaCLIPModel.from_backbone(backbone16, image_size=32, class_names=["bottle", "cable"]).eval()
    images = torch.randn(2, 3, 32, 32)
    references = model.set_normal_references(torch.randn(2, 3, 32, 32), categories="cable")
    assert references.banks[0].shape[-1] == model.config.clip_config.projection_dim
    with torch.no_grad():
        out = model(images, categories="cable")
    assert out.anomaly_maps.shape == (2, 32, 32) and torch.isfinite(out.pred_scores).all()


def test_save_load_round_trip_is_exact(backbone16, tmp_path):
    torch.manual_seed(0)
    model = zsad.AnomalyCLIPModel.from_backbone(backbone16, image_size=32).eval()
    images = torch.randn(2, 3, 32, 32)
    model.set_normal_references(torch.randn(2, 3, 32, 32), dtype=torch.float16)
    with torch.no_grad():
        before = model(images)
    model.save_normal_references(tmp_path / "refs.safetensors")
    saved = model.normal_references
    # the memory is not part of the checkpoint
    assert not any("reference" in key or "bank" in key for key in model.state_dict())
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = zsad.AnomalyCLIPModel.from_pretrained(tmp_path / "ckpt").eval()
    assert reloaded.normal_references is None
    loaded = reloaded.load_normal_references(tmp_path / "refs.safetensors")
    assert loaded.image_size == (32, 32) and loaded.num_images == 2
    assert all(a.dtype == torch.float16 and torch.equal(a, b) for a, b in zip(loaded.banks, saved.banks))
    with torch.no_grad():
        after = reloaded(images)
    assert torch.equal(before.anomaly_maps, after.anomaly_maps) and torch.equal(before.pred_scores, after.pred_scores)
    other = zsad.ZeroShotCLIPModel.from_backbone(backbone16, image_size=32)
    with pytest.raises(ValueError, match="computed by a 'zsad_anomalyclip' model"):
        other.load_normal_references(tmp_path / "refs.safetensors")


def test_clear_errors(backbone16, tmp_path):
    model = zsad.ZeroShotCLIPModel.from_backbone(backbone16, image_size=32).eval()
    with pytest.raises(ValueError, match=r"normal reference images must be a \(B, 3, H, W\) tensor of RGB images; got shape \(2, 1, 32, 32\)"):
        model.set_normal_references(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="normal reference images: height and width must be multiples of the patch size 4"):
        model.set_normal_references(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match="at least one"):
        model.set_normal_references(torch.randn(0, 3, 32, 32))
    with pytest.raises(ValueError, match="no normal references to save"):
        model.save_normal_references(tmp_path / "none.safetensors")
    model.set_normal_references(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="the normal references are 32x32 images but these are 64x64"):
        model(torch.randn(1, 3, 64, 64))


def test_evaluate_uses_each_categorys_references(backbone16, tmp_path):
    import datasets
    from zsad.data.synthetic import make_synthetic_dataset, make_texture
    from zsad.evaluation import evaluate_datasets

    test = make_synthetic_dataset(3, 3, size=32, textures=["stripes", "dots"], seed=0)
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "synthetic"))
    for category, kind in (("texture_stripes", "stripes"), ("texture_dots", "dots")):
        (tmp_path / "refs" / category).mkdir(parents=True)
        for i in range(2):
            make_texture(kind, 32, seed=100 + i).save(tmp_path / "refs" / category / f"{i}.png")
    torch.manual_seed(0)
    model = zsad.ZeroShotCLIPModel.from_backbone(backbone16, image_size=32, reference_fusion="memory_only").eval()
    results = evaluate_datasets(
        model, [str(tmp_path / "synthetic")], output_dir=tmp_path / "out", normal_references=tmp_path / "refs", log=lambda _: None
    )[str(tmp_path / "synthetic")]
    assert model.normal_references is None  # cleared after the evaluation
    processor = ZSADImageProcessor(image_size=32)
    for category in ("texture_stripes", "texture_dots"):
        rows = [i for i, name in enumerate(test["category"]) if name == category]
        model.set_normal_references(torch.stack([processor.preprocess_image(tmp_path / "refs" / category / f"{i}.png") for i in range(2)]))
        with torch.no_grad():
            scores = model(torch.stack([processor.preprocess_image(test[i]["image"]) for i in rows])).pred_scores
        expected = auroc(scores, torch.tensor([test[i]["label"] for i in rows]))
        assert abs(results["per_category"][category]["image_auroc"] - expected) < 1e-9
    with pytest.raises(ValueError, match="normal references of 'texture_dots'"):
        (tmp_path / "refs" / "texture_dots" / "0.png").unlink()
        (tmp_path / "refs" / "texture_dots" / "1.png").unlink()
        evaluate_datasets(model, [str(tmp_path / "synthetic")], output_dir=tmp_path / "out2",
                          normal_references=tmp_path / "refs", log=lambda _: None)


def test_pipeline_normal_references(backbone16, tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from zsad.pipeline import register_pipeline

    register_pipeline()
    model = zsad.ZeroShotCLIPModel.from_backbone(backbone16, image_size=32).eval()
    detector = pipeline("zero-shot-anomaly-detection", model=model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    (tmp_path / "good").mkdir()
    for i, image in enumerate(images[1:]):
        image.save(tmp_path / "good" / f"{i}.png")
    from_folder = detector(images[0], normal_references=tmp_path / "good")["score"]
    from_list = detector(images[0], normal_references=images[1:])["score"]
    processor = ZSADImageProcessor(image_size=32)
    model.set_normal_references(torch.stack([processor.preprocess_image(image) for image in images[1:]]))
    with torch.no_grad():
        expected = float(model(processor.preprocess_image(images[0])[None]).pred_scores[0])
    assert abs(from_folder - expected) < 1e-6 and abs(from_list - expected) < 1e-6
