"""Training helpers: the epoch-seeded sampler and several training datasets concatenated (AdaCLIP, §1)."""

import pytest
import torch

from zsad import AdaCLIPConfig, AdaCLIPModel

from zsad.data import DataError, load_anomaly_datasets, make_synthetic_dataset
from zsad.training import EpochShuffleSampler, scaled_learning_rate


def _order(seed: int, epoch: int, size: int = 50) -> list[int]:
    sampler = EpochShuffleSampler(size, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_a_permutation_that_changes_every_epoch():
    orders = [_order(111, epoch) for epoch in range(5)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert len({tuple(order) for order in orders}) == 5  # a new order every epoch
    assert orders[0] != list(range(50))  # shuffled at all


def test_sampler_order_is_a_function_of_seed_and_epoch_only():
    first = EpochShuffleSampler(50, seed=111)
    first.set_epoch(3)
    list(first)  # iterating does not advance anything
    assert list(first) == _order(111, 3)  # same (seed, epoch), fresh sampler, whatever happened before
    assert _order(111, 3) != _order(112, 3)
    with pytest.raises(ValueError, match="empty"):
        EpochShuffleSampler(0, seed=0)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    make_synthetic_dataset(3, 3, size=16, textures=["grid"], seed=0).save_to_disk(str(folder / "a"))
    make_synthetic_dataset(2, 2, size=16, textures=["dots"], seed=1).remove_columns(["mask"]).save_to_disk(str(folder / "b"))
    return folder / "a", folder / "b"


@pytest.mark.filterwarnings("ignore:.*have no mask")
def test_load_anomaly_datasets_concatenates_in_order(two_datasets):
    a, b = two_datasets
    combined = load_anomaly_datasets([a, b])
    assert combined.num_rows == 6 + 4
    assert combined["category"] == ["texture_grid"] * 6 + ["texture_dots"] * 4
    rows = combined.select_columns(["label", "mask"])
    assert all(rows[i]["mask"] is not None for i in range(6) if rows[i]["label"] == 1)
    assert all(rows[i]["mask"] is None for i in range(6, 10))  # image-level rows keep no mask
    assert load_anomaly_datasets([a]).num_rows == 6 == load_anomaly_datasets(a).num_rows
    dots = load_anomaly_datasets([a, b], categories=["texture_dots"])
    assert dots.num_rows == 4 and set(dots["category"]) == {"texture_dots"}
    with pytest.raises(DataError, match="texture_stripes"):
        load_anomaly_datasets([a, b], categories=["texture_stripes"])
    with pytest.raises(DataError, match="no dataset"):
        load_anomaly_datasets([])


def test_scale_lr_multiplies_by_the_number_of_processes():
    with torch.device("meta"):
        model = AdaCLIPModel(AdaCLIPConfig())
    assert scaled_learning_rate(model, None, False, 4) is None  # the method's own default then applies
    assert scaled_learning_rate(model, 3e-3, False, 4) == 3e-3
    assert scaled_learning_rate(model, None, True, 4) == pytest.approx(4 * 1e-2)  # AdaCLIP's lr 0.01 (§3.4)
    assert scaled_learning_rate(model, 3e-3, True, 2) == pytest.approx(6e-3)
