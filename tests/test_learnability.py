"""AnomalyCLIP learns something that transfers: trained on synthetic defects over three textures, it
localises defects on a fourth, unseen texture better than the untrained model, and its loss decreases
(tiny random backbone, fixed seeds).

With random backbone weights, training on a *single* texture transfers to another one only for some
texture pairs (measured: stripes -> noise yes, dots -> grid no); three training textures transfer in
every (held-out texture, backbone seed) combination measured (6 of 6, +0.05 to +0.5 pixel AUROC).
"""

import pytest
import torch
from torch.utils.data import DataLoader

from zsad import AnomalyCLIPModel
from zsad.clip.processing import ZSADImageProcessor
from zsad.data import TEXTURES, collate_fn, make_synthetic_dataset, with_anomaly_transform
from zsad.metrics import AnomalyMetrics
from zsad.testing import save_tiny_backbone
from zsad.training import EpochShuffleSampler, build_optimizer, model_inputs


def _pixel_auroc(model, dataset):
    metrics = AnomalyMetrics()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=24, collate_fn=collate_fn):
            metrics.update(model.eval()(batch["pixel_values"]), batch)
    return metrics.compute()["macro"]["pixel_auroc"]


@pytest.mark.parametrize("held_out", ["noise", "stripes"])
def test_training_transfers_to_an_unseen_texture(tmp_path, held_out):
    backbone = save_tiny_backbone(tmp_path / "clip", seed=0)
    torch.manual_seed(0)
    model = AnomalyCLIPModel.from_backbone(backbone, image_size=32)
    processor = ZSADImageProcessor(image_size=32)
    seen = [texture for texture in TEXTURES if texture != held_out]
    train = with_anomaly_transform(make_synthetic_dataset(8, 16, size=32, textures=seen, seed=1), processor)
    test = with_anomaly_transform(make_synthetic_dataset(8, 16, size=32, textures=[held_out], seed=2), processor)

    before = _pixel_auroc(model, test)
    optimizer = build_optimizer(model)  # the method's defaults: Adam 1e-3, betas (0.5, 0.999)
    sampler = EpochShuffleSampler(len(train), seed=0)
    epoch_losses = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for batch in DataLoader(train, batch_size=8, sampler=sampler, collate_fn=collate_fn):
            loss = model(**model_inputs(batch, with_targets=True)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(sum(losses) / len(losses))
    after = _pixel_auroc(model, test)

    assert epoch_losses[-1] < epoch_losses[0] - 0.5, epoch_losses
    assert after > before + 0.03, (before, after)
