"""The synthetic demo dataset: layout, determinism, the CSV quirks, label statistics and the CLI."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlc_utils.cli import main as mlc_main
from mlc_utils.data import demo
from mlc_utils.data.csvio import read_test_csv, read_train_csv
from mlc_utils.data.demo import writer
from mlc_utils.data.labels import LabelSpace


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_test_labels(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str)
    frame["Labels"] = [LabelSpace().parse(text) for text in frame["Labels"]]
    return frame


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "ds"
    return out, demo.make_demo_dataset(out, n=400, seed=0)


def test_layout(dataset):
    out, summary = dataset
    assert sorted(p.name for p in out.iterdir()) == ["data", demo.MARKER, "test.csv", "test_labels.csv", "train.csv"]
    assert not list(out.parent.glob(".*demo-*")), "temporary build folder left behind"
    n_train, n_test = demo.split_sizes(400, demo.DEFAULT_TEST_FRACTION)
    assert (summary["n_train"], summary["n_test"]) == (n_train, n_test) == (300, 100)
    assert (out / "train.csv").read_text().splitlines()[0] == "ImageID,Labels,Caption"
    assert (out / "test.csv").read_text().splitlines()[0] == "ImageID,Caption"
    assert (out / "test_labels.csv").read_text().splitlines()[0] == "ImageID,Labels"
    train, test = read_train_csv(out / "train.csv"), read_test_csv(out / "test.csv")
    truth = read_test_labels(out / "test_labels.csv")
    assert train["ImageID"].tolist() == [f"{i}.jpg" for i in range(n_train)]
    assert test["ImageID"].tolist() == [f"{i}.jpg" for i in range(n_train, 400)]
    assert truth["ImageID"].tolist() == test["ImageID"].tolist()
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(f"{i}.jpg" for i in range(400))
    widths, heights = set(), set()
    for i in range(0, 400, 7):
        with Image.open(out / "data" / f"{i}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 96 <= image.width <= 160 and 80 <= image.height <= 140
            widths.add(image.width)
            heights.add(image.height)
    assert len(widths) > 10 and len(heights) > 10  # a size distribution, not one size
    marker = json.loads((out / demo.MARKER).read_text())
    assert marker["generator"] == "mlc_utils.data.demo" and marker["n"] == 400 and marker["seed"] == 0


def test_reader_round_trip_with_quirks(dataset):
    out, summary = dataset
    expected = demo.demo_rows(400, seed=0)
    n_train = summary["n_train"]
    train, test = read_train_csv(out / "train.csv"), read_test_csv(out / "test.csv")
    truth = read_test_labels(out / "test_labels.csv")
    assert len(train) == n_train and len(test) == 400 - n_train
    assert train["ImageID"].tolist() == expected["ImageID"][:n_train].tolist()
    assert train["Labels"].tolist() == expected["Labels"][:n_train].tolist()
    assert train["Caption"].tolist() == expected["Caption"][:n_train].tolist()
    assert test["Caption"].tolist() == expected["Caption"][n_train:].tolist()
    assert truth["Labels"].tolist() == expected["Labels"][n_train:].tolist()

    captions = expected["Caption"].tolist()
    found = {quirk: [c for c in captions if quirk in demo.caption_quirks(c)] for quirk in demo.QUIRKS}
    assert all(found.values()), {q: len(v) for q, v in found.items()}
    assert any(c.endswith('"') and c.count('"') >= 2 for c in captions)  # ends with a quoted word
    assert any('"' in c[:-1] and not c.endswith('"') for c in captions)  # quotes inside only
    assert summary["quirks"] == {q: len(v) for q, v in found.items()}
    share = sum(bool(demo.caption_quirks(c) - {"commas"}) for c in captions) / len(captions)
    assert share < 0.15  # a small share, as in the real files
    raw = (out / "train.csv").read_text() + (out / "test.csv").read_text()
    assert '""' not in raw.replace('""\n', "")  # inner quotes are not escaped (only a closing `"OPEN""`)
    assert "\n\n" in raw  # a blank line inside a caption, written raw


def test_label_statistics(dataset):
    out, summary = dataset
    labels = read_train_csv(out / "train.csv")["Labels"].tolist() \
        + read_test_labels(out / "test_labels.csv")["Labels"].tolist()
    assert len(labels) == 400
    multi_hot = LabelSpace().encode(labels)
    freq = multi_hot.mean(axis=0)
    counts = multi_hot.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= 4
    assert all(len(set(row)) == len(row) for row in labels)
    assert 0.68 <= freq[1] <= 0.82
    assert freq[0] == 0 and freq[12] == 0
    assert 0.08 <= freq[3] <= 0.21  # car: the most frequent after person
    assert freq[14] <= 0.03  # parking meter: the rarest
    assert freq[1] > freq[3] > np.median(freq[[2, 4, 5, 6, 7, 9, 10, 11, 13, 16, 17, 18, 19]])
    assert 1.2 <= counts.mean() <= 1.8
    assert any(row != sorted(row) for row in labels)  # written in no fixed order, as in the real file
    assert np.allclose(summary["label_frequency"], freq, atol=1e-4)
    assert 0.6 <= summary["mention_rate"] <= 0.9  # captions leave some objects out
    assert summary["negations"] > 0 and summary["wrong_mentions"] > 0


@pytest.mark.parametrize("seed", range(8))
def test_every_quirk_even_in_a_tiny_dataset(seed):
    captions = demo.demo_rows(10, seed=seed)["Caption"]
    assert set().union(*map(demo.caption_quirks, captions)) == set(demo.QUIRKS)


def test_caption_mentions_are_noisy_but_informative():
    rows = demo.demo_rows(300, seed=1)
    words = {cls: [s.split()[-1] for s in demo.SYNONYMS[cls]] for cls in (3, 18)}  # car, dog
    for cls, nouns in words.items():
        has = np.array([cls in labels for labels in rows["Labels"]])
        said = np.array([any(w in c.lower() for w in nouns) for c in rows["Caption"]])
        assert said[has].mean() > 0.5  # mostly mentioned when present ...
        assert said[~has].mean() < 0.15  # ... rarely when absent


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = demo.make_demo_dataset(tmp_path / "a", n=60, seed=5)
    demo.make_demo_dataset(tmp_path / "b", n=60, seed=5)
    demo.make_demo_dataset(tmp_path / "c", n=60, seed=6)
    a, b, c = (tree_hashes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 60 + 4
    assert a.keys() == c.keys()
    assert a["train.csv"] != c["train.csv"] and a["data/0.jpg"] != c["data/0.jpg"]
    assert first["n_train"] == 45 and "seconds" in first  # timed for the user, not judged here


def test_refuses_foreign_folder_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc = mlc_main(["demo-data", "--out", str(out), "--n", "12"])
    err = capsys.readouterr().err
    assert rc == 1 and "not empty" in err and "--force" in err and "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(demo.DemoDirError):
        demo.make_demo_dataset(out, n=12)
    assert mlc_main(["demo-data", "--out", str(out), "--n", "12", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(read_train_csv(out / "train.csv")) + len(read_test_csv(out / "test.csv")) == 12
    (tmp_path / "file").write_text("x")
    assert mlc_main(["demo-data", "--out", str(tmp_path / "file"), "--n", "12"]) == 1


def test_rewrites_a_previous_demo_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert demo.cli(["--out", str(out), "--n", "30", "--seed", "1"]) == 0
    assert "wrote 22 train + 8 test images" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert demo.cli(["--out", str(tmp_path / "empty"), "--n", "12"]) == 0  # an empty folder is fine
    assert demo.cli(["--out", str(out), "--n", "12", "--seed", "2", "--test-fraction", "0.5"]) == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(f"{i}.jpg" for i in range(12))
    assert json.loads((out / demo.MARKER).read_text())["seed"] == 2
    assert len(read_test_csv(out / "test.csv")) == 6


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def broken(rng, instances):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return Image.new("RGB", (100, 90))

    monkeypatch.setattr(writer, "render", broken)
    with pytest.raises(RuntimeError):
        demo.make_demo_dataset(tmp_path / "ds", n=20)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, option", [
    (["--n", "5"], "--n"),
    (["--n", "9"], "--n"),
    (["--test-fraction", "0"], "--test-fraction"),
    (["--test-fraction", "1"], "--test-fraction"),
    (["--test-fraction", "1.5"], "--test-fraction"),
    (["--seed", "-1"], "--seed"),
    (["--n", "many"], "--n"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, argv, option):
    out = tmp_path / "ds"
    assert demo.cli(["--out", str(out), *argv]) == 2
    assert option in capsys.readouterr().err
    assert not out.exists()


def test_cli_requires_out_and_has_help(capsys):
    assert demo.cli([]) == 2
    assert "--out" in capsys.readouterr().err
    assert demo.cli(["--help"]) == 0
    assert "test_labels.csv" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 9}, "n"), ({"n": 20.0}, "n"), ({"seed": -3}, "seed"),
    ({"test_fraction": 0.0}, "test_fraction"), ({"test_fraction": 1}, "test_fraction"),
])
def test_library_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        demo.make_demo_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_class_names():
    assert len(demo.CLASS_NAMES) == 20 == demo.NUM_CLASSES
    assert demo.CLASS_NAMES[1] == "person"
    assert set(demo.SYNONYMS) == set(range(1, 20))
