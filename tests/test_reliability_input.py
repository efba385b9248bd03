"""Reliability, bad input: every fault gets an error naming what and where, and nothing is lost.

Images: greyscale, CMYK and PNG-named-.jpg files are odd but valid and load as RGB; every kind of
bad file (missing, empty, text, truncated, malformed so that Pillow raises something other than
OSError, a decompression bomb) is one named problem in ``validate`` (file and line, train and test
rows alike, exit 1) and stops training, feature extraction and ``predict`` naming the file, in a
DataLoader worker too. CSVs: empty captions and rows without labels are named by file and
line; the pandas dialect round-trips any caption (property test). Params: a typo, a wrong type or
an out-of-range value names the file and the parameter's full path before any work. Checkpoints:
one of another model, class count or no checkpoint at all is one clear line from ``predict``.
"""
from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT, make_tiny_folder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlc_utils import cli as mlc_cli
from mlc_utils.core.inference import Inference
from mlc_utils.data.csvio import (
    CsvFormatError,
    read_test_csv,
    read_train_csv,
    read_with_problems,
)
from mlc_utils.data.folder import check_image, load_study_data, validate_folder
from mlc_utils.data.image_files import ImageReadError, load_image
from mlc_utils.data.images import image_dataset
from mlc_utils.models import create_image_model
from mlc_utils.models.checkpoint import save_model
from mlc_utils.run import pipeline
from mlc_utils.train.config import TrainConfig
from mlc_utils.train.features import compute_features
from mlc_utils.train.loop import fit

torch.set_num_threads(1)

GOOD_ODD = {"0.jpg": "greyscale", "1.jpg": "CMYK", "2.jpg": "PNG named .jpg"}
BAD = {"3.jpg": "cannot decode", "4.jpg": "not an image", "5.jpg": "missing", "13.jpg": "cannot decode"}


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TQDM_DISABLE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture
def faulty(tmp_path) -> Path:
    """12 train + 4 test rows; images 0-2 odd but valid, 3/4/5 (train) and 13 (test) broken."""
    from PIL import Image
    root = make_tiny_folder(tmp_path / "faulty", n_train=12, n_test=4)
    images = root / "data"
    Image.fromarray(np.full((32, 32), 100, np.uint8), "L").save(images / "0.jpg")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(images / "1.jpg")  # Adobe CMYK JPEG: red
    Image.new("RGB", (32, 32), (10, 200, 30)).save(images / "2.jpg", format="PNG")
    whole = (images / "3.jpg").read_bytes()
    (images / "3.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "4.jpg").write_bytes(b"<html>an error page saved as an image</html>")
    (images / "5.jpg").unlink()
    (images / "13.jpg").write_bytes((images / "13.jpg").read_bytes()[:300])
    return root


# --- images -------------------------------------------------------------------------------------

def test_odd_but_valid_images_load_as_rgb(faulty):
    images = faulty / "data"
    for name in GOOD_ODD:
        image = load_image(images / name)
        assert image.mode == "RGB" and image.size == (32, 32), name
        assert check_image(images / name) is None, name
    assert np.asarray(load_image(images / "0.jpg"))[16, 16].tolist() == [100, 100, 100]
    red, green, blue = np.asarray(load_image(images / "1.jpg"), dtype=int)[16, 16]
    assert red > 200 and green < 60 and blue < 60, "CMYK (0,255,255,0) should read back red"
    assert np.asarray(load_image(images / "2.jpg"))[16, 16].tolist() == [10, 200, 30]


@pytest.mark.slow
def test_validate_lists_every_problem_and_exits_1(faulty):
    line = _append_bad_rows(faulty)  # two unreadable rows: no labels, and an empty caption
    proc = subprocess.run([sys.executable, "-m", "mlc_utils", "validate", "--data", str(faulty)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "6 problem(s)" in out, out
    for name, why in BAD.items():
        kind = "test" if name == "13.jpg" else "train"
        shown = next(ln for ln in out.splitlines() if f"image {faulty / 'data' / name}:" in ln)
        assert f"{faulty / f'{kind}.csv'}:" in shown and why.split()[-1] in shown, shown
    assert f"{faulty / 'train.csv'}:{line}: 90.jpg has no labels" in out
    assert f"{faulty / 'train.csv'}:{line + 1}: 91.jpg has an empty caption" in out
    for name in GOOD_ODD:
        assert f"/{name}:" not in out, f"valid {GOOD_ODD[name]} image reported as a problem"
    # the library call agrees, and the readable rows are all still there (nothing dropped silently)
    report = validate_folder(faulty, progress=False)
    assert len(report.problems) == 6 and report.counts["train rows"] == 12 and report.counts["bad image files"] == 4


def test_bad_csv_rows_stop_loading_with_file_and_line(faulty):
    line = _append_bad_rows(faulty, empty_caption="   ")
    with pytest.raises(CsvFormatError) as info:
        load_study_data(faulty)
    text = str(info.value)
    assert text.startswith("2 problem(s)")
    assert f"{faulty / 'train.csv'}:{line}: 90.jpg has no labels" in text
    assert f"{faulty / 'train.csv'}:{line + 1}: 91.jpg has an empty caption" in text
    frame, problems = read_with_problems(faulty / "train.csv", "train")
    assert len(frame) == 12 and len(problems) == 2  # every good row kept, every bad one named


def _append_bad_rows(root: Path, empty_caption: str = "") -> int:
    """Add a row without labels and one with an empty caption to train.csv; returns the first one's line."""
    first = len((root / "train.csv").read_text(encoding="utf-8").splitlines()) + 1
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write(f'90.jpg,,"a row without labels"\n91.jpg,3,"{empty_caption}"\n')
    return first


def _tiny_model(classes: int = 20):
    torch.manual_seed(0)
    return create_image_model("test_resnet", num_classes=classes, img_size=32, head="replace")


# --- every kind of bad image file ------------------------------------------------------------------
# Each maker turns a good 32x32 JPEG at ``path`` into one kind of bad file. Half of them make Pillow
# raise something other than OSError (the kinds a list of caught exception types used to miss): three
# genuinely malformed files, and Image.open patched to raise what Pillow's plugins are known to raise.

def _noise(size: int = 32):
    from PIL import Image
    return Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _truncated(fmt: str):
    def make(path: Path, monkeypatch):
        _noise().save(path, format=fmt)
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    return make


def _jpeg_with_malformed_exif(path: Path, monkeypatch):
    """Make (0x010F, ASCII) retagged MaxSampleValue (0x0119, SHORT): EXIF transpose raises struct.error."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"  # orientation 6, so exif_transpose rewrites the EXIF block
    _noise().save(path, format="JPEG", exif=exif)
    data = path.read_bytes()
    assert data.count(b"\x01\x0f\x00\x02") == 1  # the Make entry in Pillow's big-endian EXIF
    path.write_bytes(data.replace(b"\x01\x0f\x00\x02", b"\x01\x19\x00\x02"))


def _tiff_with_rational_strip_offsets(path: Path, monkeypatch):
    """StripOffsets typed RATIONAL instead of LONG: Pillow's TIFF decoder raises TypeError."""
    _noise().save(path, format="TIFF")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00" and int.from_bytes(data[4:8], "little") == 8
    entries = [10 + 12 * i for i in range(int.from_bytes(data[8:10], "little"))]
    (entry,) = [o for o in entries if int.from_bytes(data[o:o + 2], "little") == 273]
    data[entry + 2:entry + 4] = (5).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def _bmp_claiming_10_gigapixels(path: Path, monkeypatch):
    """A BMP header of 100 000 x 100 000 px: Pillow raises DecompressionBombError (not an OSError)."""
    _noise().save(path, format="BMP")
    data = bytearray(path.read_bytes())
    data[18:26] = (100_000).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))


def _over_max_image_pixels(path: Path, monkeypatch):
    """64x64 px over a limit of 3000 px: Pillow only warns (DecompressionBombWarning) up to twice the limit."""
    from PIL import Image
    _noise(64).save(path, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # the good 32x32 images (1024 px) stay under it


def _pillow_raises(error: Exception):
    def make(path: Path, monkeypatch):
        from PIL import Image
        real_open = Image.open

        def open_(fp, *args, **kwargs):
            if Path(fp) == path:
                raise error
            return real_open(fp, *args, **kwargs)
        monkeypatch.setattr(Image, "open", open_)  # forked DataLoader workers inherit the patch
    return make


BAD_FILES = {  # kind -> (maker, what the reason must say)
    "missing": (lambda path, mp: path.unlink(), "missing"),
    "empty": (lambda path, mp: path.write_bytes(b""), "empty file"),
    "text named .jpg": (lambda path, mp: path.write_text("<html>an error page</html>"), "not an image"),
    "truncated JPEG": (_truncated("JPEG"), "cannot decode"),
    "truncated PNG": (_truncated("PNG"), "cannot decode"),
    "JPEG with malformed EXIF": (_jpeg_with_malformed_exif, "struct.error"),
    "TIFF with rational strip offsets": (_tiff_with_rational_strip_offsets, "TypeError"),
    "BMP claiming 10 gigapixels": (_bmp_claiming_10_gigapixels, "decompression bomb"),
    "over MAX_IMAGE_PIXELS": (_over_max_image_pixels, "decompression bomb"),
    "struct.error": (_pillow_raises(struct.error("unpack requires a buffer of 4 bytes")), "struct.error"),
    "IndexError": (_pillow_raises(IndexError("list index out of range")), "IndexError"),
    "ZeroDivisionError": (_pillow_raises(ZeroDivisionError("division by zero")), "ZeroDivisionError"),
    "RuntimeError": (_pillow_raises(RuntimeError("decoder error -9")), "RuntimeError"),
    "KeyError": (_pillow_raises(KeyError("XMP")), "KeyError"),
    "EOFError": (_pillow_raises(EOFError("no more images")), "EOFError"),
    "MemoryError": (_pillow_raises(MemoryError()), "MemoryError"),
}
GENUINE_NON_OSERROR = ["JPEG with malformed EXIF", "TIFF with rational strip offsets", "BMP claiming 10 gigapixels"]


@pytest.fixture
def small(tmp_path) -> Path:
    """8 train rows (0-7.jpg) and 3 test rows (8-10.jpg), all good."""
    return make_tiny_folder(tmp_path / "small", n_train=8, n_test=3)


def _spoil(root: Path, image_id: str, kind: str, monkeypatch) -> Path:
    path = root / "data" / image_id
    BAD_FILES[kind][0](path, monkeypatch)
    return path


def _line_of(csv: Path, image_id: str) -> int:
    """The line a row starts on, counted here rather than by the CSV reader under test."""
    lines = csv.read_text(encoding="utf-8").splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if text.startswith(f"{image_id},")]
    return number


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_kind_of_bad_image_raises_naming_the_file(small, monkeypatch, kind):
    path = _spoil(small, "3.jpg", kind, monkeypatch)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"image {path}: ") and BAD_FILES[kind][1] in message, message
    assert "\n" not in message, message
    assert check_image(path) == info.value.reason and check_image(small / "data" / "4.jpg") is None


@pytest.mark.parametrize("where", ["train", "test"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_validate_names_csv_line_and_image_for_every_kind(small, monkeypatch, kind, where):
    image_id = "3.jpg" if where == "train" else "9.jpg"
    path = _spoil(small, image_id, kind, monkeypatch)
    report = validate_folder(small, progress=False)  # returns: one bad file never stops the check
    csv = small / f"{where}.csv"
    assert len(report.problems) == 1, report.render()
    (problem,) = report.problems
    assert problem.startswith(f"{csv}:{_line_of(csv, image_id)}: image {path}: "), problem
    assert BAD_FILES[kind][1] in problem, problem
    assert report.counts["images checked"] == 11 and report.counts["bad image files"] == 1


def _message_raised(call, *args, **kwargs) -> str:
    """The message of the ImageReadError ``call`` raises. The traceback is dropped at once: it holds the
    DataLoader iterator, whose worker would otherwise live until the garbage collector breaks the cycle
    (torch then waits 5 s to join it, slowing whichever test comes next)."""
    with pytest.raises(ImageReadError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    del info
    return message


@pytest.mark.parametrize("kind, workers", [(kind, 0) for kind in sorted(BAD_FILES)] +
                         [(kind, 1) for kind in ["missing", "IndexError"] + GENUINE_NON_OSERROR])
def test_training_stops_naming_the_bad_image(small, tmp_path, monkeypatch, kind, workers):
    """One bad file among good ones: the error names it, in a DataLoader worker process too."""
    path = _spoil(small, "5.jpg", kind, monkeypatch)
    model = _tiny_model()
    ids = [f"{i}.jpg" for i in range(8)]
    train = image_dataset(small, ids, np.zeros((len(ids), 20), np.float32), model.spec["data"], train=True)
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, num_workers=workers)
    message = _message_raised(fit, model, train, None, cfg, tmp_path / "out")
    assert message.startswith(f"image {path}: ") and BAD_FILES[kind][1] in message, message
    assert "Traceback" not in message, message  # a worker's error comes back as the same one line
    assert not (tmp_path / "out" / "last.pt").exists()  # no checkpoint of a half epoch


@pytest.mark.parametrize("workers", [0, 1])
def test_feature_extraction_stops_naming_the_bad_image(small, monkeypatch, workers):
    path = _spoil(small, "2.jpg", "JPEG with malformed EXIF", monkeypatch)
    model = create_image_model("test_resnet", img_size=32, head="replace")
    message = _message_raised(compute_features, model, small, [f"{i}.jpg" for i in range(8)], "center",
                              Inference("cpu", batch_size=4, num_workers=workers), progress=False)
    assert message.startswith(f"image {path}: cannot decode (struct.error: "), message


@pytest.mark.parametrize("kind, workers", [(kind, 0) for kind in sorted(BAD_FILES)] +
                         [("ZeroDivisionError", 1), ("BMP claiming 10 gigapixels", 1)])
def test_predict_stops_naming_the_bad_image_and_writes_nothing(small, tmp_path, monkeypatch, capsys, kind,
                                                               workers):
    path = _spoil(small, "9.jpg", kind, monkeypatch)
    ckpt = save_model(_tiny_model(), tmp_path / "model.pt")
    out = tmp_path / "sub.csv"
    code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(small), "--out", str(out),
                         "--batch-size", "2", "--num-workers", str(workers)])
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the progress bar's redraws
    assert code == 1 and err.startswith(f"predict: error: image {path}: ") and BAD_FILES[kind][1] in err, err
    assert "\n" not in err and "Traceback" not in err and not out.exists(), err


# --- CSV dialects ---------------------------------------------------------------------------------

plain = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
# a caption line that looks like the start of a record is the case a line-based reader gets wrong
record_like = st.builds(lambda n, rest: f"{n}.jpg,{rest}", st.integers(0, 99999), plain)
caption = st.lists(st.one_of(plain, record_like), min_size=1, max_size=4).map("\n".join).filter(lambda s: s.strip())


@settings(max_examples=200, deadline=None)
@given(st.lists(caption, min_size=1, max_size=5))
@example(['"\n0.JPG,'])  # a quote, then a line that looks like a record: pandas writes three quotes
@example(['"\n0.jpg,0'])  # read as written: the same ImageID twice; re-joined: one pandas caption
@example(['"\n0.JPG,0'])  # read as written: an unquoted caption holding a quote, which no dialect writes
@example(['"\n0.JPG,"'])  # as written, also a clean competition file: two rows whose caption is a quote
def test_any_caption_round_trips_in_pandas_dialect(tmp_path_factory, texts):
    """A CSV written by pandas (RFC 4180 quoting) reads back exactly with ``dialect="pandas"``, train
    and test alike. ``auto`` gives that reading too, except where the same bytes are also a competition
    file without a single problem (two lines, each an ImageID and three quotes: one pandas caption,
    or two competition captions that are each a quote); there it may give the competition reading, and
    never anything else."""
    ids = [f"{i}.jpg" for i in range(len(texts))]
    folder = tmp_path_factory.mktemp("pd")
    pd.DataFrame({"ImageID": ids, "Labels": ["1 2"] * len(texts), "Caption": texts}).to_csv(
        folder / "train.csv", index=False)
    pd.DataFrame({"ImageID": ids, "Caption": texts}).to_csv(folder / "test.csv", index=False)
    for name, read in (("train.csv", read_train_csv), ("test.csv", read_test_csv)):
        exact = read(folder / name, dialect="pandas")
        assert list(exact.Caption) == texts and list(exact.ImageID) == ids, name
        if name == "train.csv":
            assert list(exact.Labels) == [[1, 2]] * len(texts)
        competition, problems = read_with_problems(folder / name, dialect="competition")
        readings = [texts] + ([list(competition.Caption)] if not problems else [])
        assert list(read(folder / name).Caption) in readings, name


def test_broken_quote_is_still_an_error_not_merged(tmp_path):
    """Re-joining pandas continuations must not swallow a real competition-file error."""
    path = tmp_path / "train.csv"
    path.write_text('ImageID,Labels,Caption\n1.jpg,1,"never closed\n2.jpg,1,"fine"\n3.jpg,2,"ok"\n')
    with pytest.raises(CsvFormatError, match=r"train.csv:2: caption opens a quote that is never closed"):
        read_train_csv(path)


# --- params ----------------------------------------------------------------------------------------

BAD_PARAMS = [
    ("threshold: 1.5\n", "threshold: must be in (0, 1) (got 1.5)"),
    ("image:\n  train: {epochs: -1}\n", "image.train.epochs: must be >= 0 (got -1)"),
    ("caption:\n  train: {epochs: -2}\n", "caption.train.epochs: must be >= 0 (got -2)"),
    ("image:\n  models:\n    - {name: test_resnet, train: {epochs: -3}}\n",
     "image.models[0].train.epochs: must be >= 0 (got -3)"),
    ("fusion:\n  train: {epochs: -1}\n", "fusion.train.epochs: must be >= 0 (got -1)"),
    ("image:\n  train: {epoch: 3}\n", "unknown parameter 'image.train.epoch'; did you mean 'epochs'?"),
    ("tresholdd: 0.5\n", "unknown parameter 'tresholdd'; did you mean 'threshold'?"),
    ("image:\n  train: {lr: fast}\n", "image.train.lr: expected a number, got 'fast'"),
    ("caption:\n  train: {epochs: three}\n", "caption.train.epochs: expected an integer, got 'three'"),
    ("split:\n  val_fraction: 1.5\n", "split.val_fraction: must be in (0, 1) (got 1.5)"),
    ("ablation:\n  train: {epochs: -1}\n", "ablation.train.epochs: must be >= 0"),
]


@pytest.mark.parametrize("yaml_text, message", BAD_PARAMS)
def test_bad_params_fail_before_any_work_naming_file_and_parameter(tmp_path, monkeypatch, capsys,
                                                                   yaml_text, message):
    path = tmp_path / "bad.yaml"
    # data_dir does not exist: a value that slips through validation shows up as a data_dir error instead
    path.write_text(f"run: t\ndata_dir: {tmp_path / 'nowhere'}\nstages: [eda]\n" + yaml_text)
    monkeypatch.setattr(pipeline, "run_study", functools.partial(pipeline.run_study, root=tmp_path / "project"))
    code = pipeline.cli(["--params", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"mlc_utils run: {path}: {message}" in err, err
    assert not (tmp_path / "project" / "runs").exists()


@pytest.mark.slow
def test_bad_params_from_the_command_line(tmp_path):
    """The real command: exit 2, one line naming file and parameter, nothing written."""
    path = tmp_path / "bad.yaml"
    path.write_text(f"run: t-cli\ndata_dir: {tmp_path}\nstages: [eda]\nimage:\n  train:\n    epochs: -1\n")
    proc = subprocess.run([sys.executable, "-m", "mlc_utils", "run", "--params", str(path)], capture_output=True,
                          text=True, env=_env(), timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"mlc_utils run: {path}: image.train.epochs: must be >= 0 (got -1)"
    assert not (PROJECT / "runs" / "t-cli").exists()


# --- checkpoints -------------------------------------------------------------------------------------

def _checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint file, what the error must say)."""
    good = save_model(_tiny_model(), folder / "good.pt")
    made = {}

    def variant(name, change, expect):
        ckpt = torch.load(good, weights_only=False)
        change(ckpt)
        torch.save(ckpt, folder / f"{name}.pt")
        made[name] = (folder / f"{name}.pt", expect)

    five = _tiny_model(5).state_dict()
    other_arch = create_image_model("test_efficientnet", img_size=32, head="replace").state_dict()
    variant("other_class_count", lambda c: c.update(model=five),
            "head.weight [5, 96] in the checkpoint, [20, 96] in the model")
    variant("other_model", lambda c: c.update(model=other_arch), "missing key(s)")
    variant("fusion_model", lambda c: c["spec"].update(kind="fusion"), "holds a 'fusion' model, not an image model")
    torch.save(_tiny_model().state_dict(), folder / "bare_state_dict.pt")
    made["bare_state_dict"] = (folder / "bare_state_dict.pt", "is not an mlc training checkpoint")
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    made["truncated"] = (folder / "truncated.pt", "cannot be read")
    (folder / "notes.pt").write_text("not a checkpoint\n")
    made["text_file"] = (folder / "notes.pt", "cannot be read")
    return made


def test_predict_refuses_foreign_checkpoints_in_one_line(faulty, tmp_path, capsys):
    (faulty / "test.csv").write_text('ImageID,Caption\n10.jpg,"a"\n11.jpg,"b"\n')  # readable images only
    for name, (ckpt, expect) in _checkpoints(tmp_path).items():
        out = tmp_path / f"{name}.csv"
        code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(faulty), "--out", str(out)])
        err = capsys.readouterr().err.strip().split("\r")[-1]
        assert code == 1, (name, err)
        assert err.startswith("predict: error:") and str(ckpt) in err and expect in err, (name, err)
        assert "\n" not in err and len(err) < 800, (name, err)  # one readable line, not a state-dict dump
        assert not out.exists(), name
