"""The explore stage's browser: a model's false negatives and false positives per class, and one image's scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.explore import KINDS, Explorer


@pytest.fixture
def explorer(tmp_path) -> Explorer:
    ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=float)
    p = np.array([[0.9, 0.1, 0.2], [0.3, 0.6, 0.1], [0.2, 0.8, 0.4], [0.8, 0.7, 0.9]])
    members = {"m": Member("m", "image", tmp_path, ids, p), "n": Member("n", "caption", tmp_path, ids, 1 - p)}
    val = pd.DataFrame({"ImageID": ids, "Caption": ["one", "two  words", "three", "four"],
                        "Labels": [[0, 2], [0], [1, 2], [0, 1]]})
    return Explorer(val, y, members, ("cat", "dog", "bird"))


def test_cases_are_the_models_mistakes_most_confident_first(explorer):
    fn = explorer.cases("m", 2, KINDS[0])
    assert fn.ImageID.tolist() == ["a.jpg", "c.jpg"] and fn.score.tolist() == [0.2, 0.4]
    fp = explorer.cases("m", 2, KINDS[1])
    assert fp.ImageID.tolist() == ["d.jpg"] and fp.truth.iloc[0] == "0 (cat) 1 (dog)"
    assert explorer.cases("m", 0, KINDS[0]).ImageID.tolist() == ["b.jpg"]
    assert explorer.cases("m", 0, KINDS[0], threshold=0.25).empty
    with pytest.raises(ValueError):
        explorer.cases("m", 0, "misses")


def test_classes_counts_and_one_image(explorer):
    assert [c for _, c in explorer.class_options()] == [0, 1, 2]
    assert explorer.class_options()[0][0] == "0 (cat): 3 images"
    counts = explorer.mistake_counts()
    assert counts.loc["m", "2 (bird): 2 images"] == "FN 2 / FP 1"
    row = explorer.image_row("c.jpg")
    assert row == 2 and "**c.jpg**" in explorer.describe(row, "m") and "m predicts: 1 (dog)" in explorer.describe(row, "m")
    scores = explorer.scores(row)
    assert list(scores.columns) == ["class", "truth", "m", "n"] and scores.truth.tolist() == [0, 1, 1]
    with pytest.raises(KeyError):
        explorer.image_row("zzz.jpg")


def test_mistakes_are_those_of_the_submitted_labels(explorer):
    """At 0.9 b.jpg scores no class under model "m": the submission's rule gives it its top class
    (1, dog), so the explorer counts that as a false positive of dog, as the submission would."""
    from mlc_utils.data.labels import decide
    submitted = decide(explorer.probs("m"), 0.9)
    truth = explorer.y_val > 0.5
    for c in range(3):
        assert len(explorer.cases("m", c, KINDS[0], 0.9)) == (truth[:, c] & ~submitted[:, c]).sum(), c
        assert len(explorer.cases("m", c, KINDS[1], 0.9)) == (~truth[:, c] & submitted[:, c]).sum(), c
    assert "b.jpg" in explorer.cases("m", 1, KINDS[1], 0.9).ImageID.tolist()


def test_a_case_image_is_one_png_output_of_bounded_size(tmp_path):
    from PIL import Image

    from mlc_utils.study.explore import case_image
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "x.jpg")
    shown = case_image(tmp_path, "x.jpg", size=320)
    assert shown.format == "png" and shown.data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(__import__("io").BytesIO(shown.data)) as png:
        assert png.size == (320, 240)
