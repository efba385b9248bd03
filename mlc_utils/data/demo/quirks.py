"""The real captions' quirks, on a small seed-determined share of demo captions: unescaped inner
quotes, a caption ending in a quoted word, raw newlines, a blank line, a trailing ``/``, commas.
Every quirk occurs at least once in each dataset."""
from __future__ import annotations

import numpy as np

from mlc_utils.data.demo.captions import pick

QUIRKS = ("inner_quotes", "ends_with_quote", "newline", "blank_line", "trailing_slash", "commas")
_SECOND = ("The photo was taken outside.", "It looks like a nice day.", "Nobody seems to notice.",
           "The picture is a bit dark.")
_SIGN_WORDS = ("STOP", "OPEN", "SALE", "EXIT", "ONE WAY", "PARKING", "spray.")


def caption_quirks(caption: str) -> set[str]:
    """Which of :data:`QUIRKS` a caption shows (read off the text, so it also works on real captions)."""
    found = set()
    if '"' in caption.rstrip('"'):
        found.add("inner_quotes")
    if caption.endswith('"'):
        found.add("ends_with_quote")
    if "\n" in caption:
        found.add("newline")
    if "\n\n" in caption:
        found.add("blank_line")
    if caption.endswith("/"):
        found.add("trailing_slash")
    if "," in caption:
        found.add("commas")
    return found


def assign_quirks(seed: int, n: int) -> list[set[str]]:
    """Each row's quirks: rare, seed-determined, and every kind at least once."""
    rng = np.random.default_rng([seed, n, 7_777_777])
    rates = {"inner_quotes": 0.02, "ends_with_quote": 0.01, "newline": 0.01, "blank_line": 0.005,
             "trailing_slash": 0.01, "commas": 0.02}
    draws = rng.random((n, len(QUIRKS)))
    rows = [{q for k, q in enumerate(QUIRKS) if draws[i, k] < rates[q]} for i in range(n)]
    ends = ("ends_with_quote", "trailing_slash")  # both rewrite the caption's end: one per caption
    for row in rows:
        if set(ends) <= row:
            row.discard("trailing_slash")
    forced = rng.choice(n, size=len(QUIRKS), replace=False)
    for row, quirk in zip(forced, QUIRKS):
        rows[int(row)].add(quirk)
        if quirk in ends:
            rows[int(row)].discard(ends[1 - ends.index(quirk)])
    return rows


def with_quirks(rng: np.random.Generator, text: str, quirks: set[str]) -> str:
    """``text`` showing ``quirks`` (a row of :func:`assign_quirks`), drawn from the caption's own ``rng``."""
    if "commas" in quirks:
        text = pick(rng, ("In this picture, ", "Well, ", "Outside, ")) + text[0].lower() + text[1:]
    if "inner_quotes" in quirks:
        text = text[:-1] + f' with a sign that reads "{pick(rng, _SIGN_WORDS)}" on it.'
    if "blank_line" in quirks:
        text += "\n\n" + pick(rng, _SECOND)
    elif "newline" in quirks:
        text += "\n" + pick(rng, _SECOND)
    if "ends_with_quote" in quirks:
        text = text[:-1] + f' under a sign that reads "{pick(rng, _SIGN_WORDS)}"'
    elif "trailing_slash" in quirks:
        text = text[:-1] + "/"
    return text
