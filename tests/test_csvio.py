"""The competition CSV reader: real pack, hand-made quirky files, the pandas dialect, every error."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlc_utils.data.csvio import (
    CsvFormatError,
    format_competition_csv,
    read_competition_csv,
    read_test_csv,
    read_train_csv,
    read_with_problems,
    write_competition_csv,
)
from mlc_utils.data.labels import LabelSpace

QUIRKY = (
    'ImageID,Labels,Caption\n'
    '4.jpg,8 3 7,"A train coming to a stop on the tracks out side."\n'
    '552.jpg,11,"A hydrant with "caution" tape around it."\n'
    '1338.jpg,1,"A man surfing with titling that reads "spray.""\n'
    '1014.jpg,18,"Atop an oriental rug rests a dog and a taller one\n'
    'full of very tidily arranged piles of jeans."\n'
    '24624.jpg,1 2,"A couple of men standing around an exercise w\n'
    '\n'
    '\n'
    'A couple of men standing and sitting around an exercise bike."\n'
    '4787.jpg,1 18,"Man and his dog laying on the floor inside of a room/"\n'
    '14957.jpg,3 13,"A red stop sign that reads "COURT"/"\n'
    '2259.jpg,1 3,"Men loading up a van with bags and suitcases.\n'
    '."\n'
    '5.jpg,1,"An elephant, a child, giraffes and a lion."\n'
)


def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_quirky_file_one_row_per_record(tmp_path):
    frame = read_train_csv(write(tmp_path, QUIRKY))
    assert frame.attrs["dialect"] == "competition"
    assert list(frame.ImageID) == ["4.jpg", "552.jpg", "1338.jpg", "1014.jpg", "24624.jpg", "4787.jpg",
                                   "14957.jpg", "2259.jpg", "5.jpg"]
    cap = frame.set_index("ImageID").Caption
    assert cap["552.jpg"] == 'A hydrant with "caution" tape around it.'
    assert cap["1338.jpg"] == 'A man surfing with titling that reads "spray."'
    assert cap["1014.jpg"] == "Atop an oriental rug rests a dog and a taller one\nfull of very tidily arranged piles of jeans."
    assert cap["24624.jpg"].count("\n") == 3
    assert cap["4787.jpg"].endswith("room/")
    assert cap["14957.jpg"] == 'A red stop sign that reads "COURT"/'
    assert cap["2259.jpg"] == "Men loading up a van with bags and suitcases.\n."
    assert frame.set_index("ImageID").Labels["4.jpg"] == [8, 3, 7]
    assert list(frame.line) == [2, 3, 4, 5, 7, 11, 12, 13, 15]


def test_crlf_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(QUIRKY.replace("\n", "\r\n").encode())
    frame = read_train_csv(path)
    assert len(frame) == 9 and "\r" not in "".join(frame.Caption)


def test_reads_pandas_written_csv(tmp_path):
    frame = pd.DataFrame({"ImageID": ["1.jpg", "2.jpg", "3.jpg"], "Labels": ["1", "2 3", "4"],
                          "Caption": ['plain caption', 'with "quotes", and comma', "two\nlines"]})
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    back = read_train_csv(path)
    assert back.attrs["dialect"] == "pandas"
    assert list(back.Caption) == list(frame.Caption)
    assert list(back.Labels) == [[1], [2, 3], [4]]


def test_test_csv(tmp_path):
    frame = read_test_csv(write(tmp_path, 'ImageID,Caption\n30000.jpg,"A girl, a "hat"."\n30010.jpg,"x/"\n', "test.csv"))
    assert list(frame.Caption) == ['A girl, a "hat".', "x/"]
    assert "Labels" not in frame


@pytest.mark.parametrize("text, message, line", [
    ("ImageID,Caption\n1.jpg,\"a\"\n", "missing column(s) Labels", 1),
    ("ImageID,Labels,Caption,Extra\n1.jpg,1,\"a\",x\n", "unexpected column(s) Extra", 1),
    ("", "file is empty", 1),
    ('ImageID,Labels,Caption\n1.jpg,1,"ok"\n1.jpg,2,"again"\n', "duplicate ImageID 1.jpg (first on line 2)", 3),
    ('ImageID,Labels,Caption\n1.jpg,1 20,"a"\n', "outside the label space", 2),
    ('ImageID,Labels,Caption\n1.jpg,1 x,"a"\n', "is not an integer", 2),
    ('ImageID,Labels,Caption\n1.jpg,,"a"\n', "has no labels", 2),
    ('ImageID,Labels,Caption\n1.jpg,1,""\n', "empty caption", 2),
    ('ImageID,Labels,Caption\n1.jpg,1,"never closed\n2.jpg,1,"fine"\n', "never closed", 2),
    ('ImageID,Labels,Caption\ngarbage line\n1.jpg,1,"a"\n', "does not start a record", 2),
    ('ImageID,Labels,Caption\n1.jpg,"only caption"\n', "does not have the fields", 2),
    ('ImageID,Labels,Caption\n1.jpg,1,"a"\n2.jpg,1 1,"b"\n', "repeat a class", 3),
])
def test_errors_name_file_line_and_content(tmp_path, text, message, line):
    path = write(tmp_path, text)
    with pytest.raises(CsvFormatError) as info:
        read_train_csv(path)
    problem = next(p for p in info.value.problems if message in p.message)
    assert problem.line == line and problem.path == str(path)
    assert f"{path}:{line}:" in str(info.value)


def test_every_problem_reported_not_only_first(tmp_path):
    text = 'ImageID,Labels,Caption\n1.jpg,1,"a"\n2.jpg,99,"b"\n3.jpg,1,""\n1.jpg,1,"c"\n'
    with pytest.raises(CsvFormatError) as info:
        read_train_csv(write(tmp_path, text))
    assert [p.line for p in info.value.problems] == [3, 4, 5]


def test_not_utf8(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b'ImageID,Labels,Caption\n1.jpg,1,"caf\xe9"\n')
    with pytest.raises(CsvFormatError, match=r"train.csv:2: not UTF-8"):
        read_train_csv(path)


def test_label_space_from_params(tmp_path):
    path = write(tmp_path, 'ImageID,Labels,Caption\n1.jpg,4,"a"\n')
    with pytest.raises(CsvFormatError, match="outside the label space 0..3"):
        read_train_csv(path, LabelSpace(4))


def test_writer_refuses_unreadable_caption():
    frame = pd.DataFrame({"ImageID": ["1.jpg"], "Labels": [[1]], "Caption": ["first\n2.jpg,1,looks like a record"]})
    with pytest.raises(ValueError, match="would read back as a new record"):
        format_competition_csv(frame)


captions = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=60).filter(lambda s: s.strip())


@settings(max_examples=150, deadline=None)
@given(st.lists(captions, min_size=1, max_size=6))
@example(['"', '"'])  # found by Hypothesis: two lone-quote captions were re-joined as one pandas-quoted field
def test_any_caption_round_trips_in_competition_dialect(tmp_path_factory, texts):
    frame = pd.DataFrame({"ImageID": [f"{i}.jpg" for i in range(len(texts))],
                          "Labels": [[1, i % 19 + 1] if i % 19 + 1 != 1 else [1] for i in range(len(texts))],
                          "Caption": texts})
    try:
        text = format_competition_csv(frame)
    except ValueError:
        return  # the writer refuses what the dialect cannot hold (a caption line that starts a record)
    path = tmp_path_factory.mktemp("rt") / "train.csv"
    path.write_text(text, encoding="utf-8")
    back = read_competition_csv(path, "train", dialect="competition")
    assert list(back.Caption) == texts
    assert list(back.ImageID) == list(frame.ImageID)


def test_real_pack_reads_every_row(real_data):
    train = read_train_csv(real_data / "train.csv")
    test = read_test_csv(real_data / "test.csv")
    assert len(train) == 10_000 and len(test) == 1_000
    assert train.ImageID.is_unique and test.ImageID.is_unique
    assert train.attrs["dialect"] == "competition"
    caps = train.set_index("ImageID").Caption
    assert caps["1338.jpg"].endswith('reads "spray."')
    assert caps["4787.jpg"].endswith("room/")
    assert "\n" in caps["1014.jpg"]
    y = LabelSpace().encode(list(train.Labels))
    assert y[:, 0].sum() == 0 and y[:, 12].sum() == 0 and 0.7 < y[:, 1].mean() < 0.8


def test_writer_round_trips_real_pack(real_data, tmp_path):
    train = read_train_csv(real_data / "train.csv")
    out = write_competition_csv(train, tmp_path / "train.csv")
    back = read_train_csv(out)
    assert back[["ImageID", "Caption"]].equals(train[["ImageID", "Caption"]])
    assert list(back.Labels) == list(train.Labels)


def test_lone_quote_captions_stay_two_records_whatever_the_dialect_asked(tmp_path):
    """Two captions that are a single quote each: the competition dialect never escapes, so each line
    is its own record; "auto" reads the file as written before trying pandas' quoted continuations."""
    path = write(tmp_path, 'ImageID,Labels,Caption\n0.jpg,1,"""\n1.jpg,1 2,"""\n')
    for dialect in ("competition", "auto"):
        frame = read_train_csv(path, dialect=dialect)
        assert list(frame.Caption) == ['"', '"'] and list(frame.line) == [2, 3], dialect
    assert read_train_csv(path).attrs["dialect"] == "competition"


@pytest.mark.parametrize("second", ["0.jpg", "0.JPG"])
def test_auto_rejoins_when_the_file_as_written_reads_oddly(tmp_path, second):
    """pandas wrote one caption, a quote then a line ``<second>,0``. Read as written that is two records:
    the first's ImageID again, or an unquoted caption holding a quote (which neither dialect writes);
    "auto" takes the re-joined reading, which has no such oddity."""
    path = write(tmp_path, f'ImageID,Caption\n0.jpg,"""\n{second},0"\n', "test.csv")
    frame = read_test_csv(path)
    assert list(frame.Caption) == [f'"\n{second},0'] and frame.attrs["dialect"] == "pandas"
    written, problems = read_with_problems(path, dialect="competition")
    if second == "0.jpg":
        assert [p.message for p in problems] == ["duplicate ImageID 0.jpg (first on line 2)"]
    else:
        assert not problems and list(written.Caption) == ['"', '0"']
