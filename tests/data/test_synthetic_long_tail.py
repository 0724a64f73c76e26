"""Tests of the long-tailed synthetic variant: `long_tail_ratio` and `synthetic_longtail50`."""

import collections
import json
import math

import numpy as np
import pytest

import retinanet_fl  # noqa: F401  registers the synthetic datasets
from retinanet_fl.data.synthetic import (
    SYNTHETIC_CLASSES,
    generate_synthetic_coco,
    long_tail_class_probs,
    synthetic_split_paths,
)

K = len(SYNTHETIC_CLASSES)


def _class_counts(root, split):
    with open(synthetic_split_paths(str(root), split)[0]) as f:
        dataset = json.load(f)
    counts = collections.Counter(a["category_id"] for a in dataset["annotations"])
    return [counts[i + 1] for i in range(K)], dataset["info"]


def test_class_probabilities_decay_geometrically_over_the_ratio():
    probs = long_tail_class_probs(50.0)
    assert probs.shape == (K,) and probs.sum() == pytest.approx(1.0)
    assert probs[0] / probs[-1] == pytest.approx(50.0)
    # Every class is rarer than the one before by the same factor, 50^(1 / (K - 1)).
    np.testing.assert_allclose(probs[:-1] / probs[1:], 50.0 ** (1 / (K - 1)))
    np.testing.assert_allclose(long_tail_class_probs(1.0), np.full(K, 1 / K))
    assert long_tail_class_probs(9.0, num_classes=3).tolist() == pytest.approx(
        [9 / 13, 3 / 13, 1 / 13]
    )


def test_training_counts_follow_the_ratio_and_validation_stays_balanced(tmp_path):
    # 80 images of 3 objects at ratio 20: ~110 red circles against ~6 blue triangles expected.
    generate_synthetic_coco(
        str(tmp_path / "lt"),
        num_train=80,
        num_val=40,
        image_size=96,
        seed=1,
        objects_per_image=(3, 3),
        max_object_size=32.0,
        long_tail_ratio=20.0,
    )
    train, train_info = _class_counts(tmp_path / "lt", "train")
    val, val_info = _class_counts(tmp_path / "lt", "val")
    assert train_info["long_tail_ratio"] == 20.0 and val_info["long_tail_ratio"] is None
    total = sum(train)
    expected = long_tail_class_probs(20.0) * total
    # Each class within a few binomial standard deviations of its expected count.
    for count, mean in zip(train, expected):
        assert abs(count - mean) <= 4 * math.sqrt(mean) + 1, (train, expected.round(1))
    assert train[0] >= 5 * max(train[-1], 1)
    assert train[0] > train[2] > train[4]
    # Validation: every class near total / K, the most and least frequent alike.
    assert min(val) >= 0.5 * sum(val) / K and max(val) <= 1.6 * sum(val) / K, val


def test_a_balanced_dataset_is_unchanged_by_the_long_tail_option(tmp_path):
    tiny = dict(num_train=3, num_val=2, image_size=64, seed=5)
    generate_synthetic_coco(str(tmp_path / "a"), **tiny)
    generate_synthetic_coco(str(tmp_path / "b"), **tiny, long_tail_ratio=None)
    generate_synthetic_coco(str(tmp_path / "c"), **tiny, long_tail_ratio=30.0)
    for split in ("train", "val"):
        files = [open(synthetic_split_paths(str(tmp_path / r), split)[0]).read() for r in "abc"]
        assert files[0] == files[1]
    # Only training is skewed: validation is the balanced one, image for image.
    val_a, val_c = (_class_counts(tmp_path / r, "val")[0] for r in "ac")
    assert val_a == val_c


@pytest.mark.parametrize("ratio", [0.5, 0.0, -3.0, float("nan"), float("inf"), True, "50"])
def test_bad_ratios_are_refused(tmp_path, ratio):
    with pytest.raises(ValueError, match="long_tail_ratio must be a finite"):
        generate_synthetic_coco(
            str(tmp_path / "ds"), num_train=2, num_val=1, image_size=64, long_tail_ratio=ratio
        )
    assert not (tmp_path / "ds").exists()
