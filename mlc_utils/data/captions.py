"""Caption preprocessing: the paper's cleaning steps (no torch here; the tokenized dataset is in
:mod:`mlc_utils.data.caption_tokens`).

The paper cleans captions before BERT: fix symbols, drop entity mentions, strip punctuation and
collapse whitespace. Each step is a switch on :class:`CaptionCleaner` so an ablation can turn one
off without touching code; the steps run in the fixed order of :data:`CLEANING_STEPS` (symbols
first so ``&amp;`` and curly quotes are plain before the quote-based entity step looks for them).

What "entity mentions" means here (the paper does not define it): text that *names* a thing
instead of describing what is seen -- the words on a sign, a bus destination, a shop name. Two
patterns, both measured on the dev captions (27 "reads", 12 "says", 82 captions with quotes):

* a quoted span right after a naming verb: ``a sign that reads "Los Angeles"`` -> ``a sign that reads``
  (quoted spans elsewhere, e.g. ``"caution" tape``, are descriptive and are kept; only their
  quotes go, with the punctuation step);
* an unquoted run of Capitalised words right after a naming verb: ``a cake that says Dad on it``
  -> ``a cake that says on it``.

Mid-sentence proper nouns without a naming verb (``Buckingham Palace``) are a separate, riskier
switch (``drop_proper_nouns``, off by default): a capital letter in these captions is as often a
typo (``Cat Siamese``) as a name.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

# ---------------------------------------------------------------------------------------------
# cleaning steps: each a str -> str function, run in this order when its switch is on
# ---------------------------------------------------------------------------------------------

SYMBOLS = {  # replaced by words so the meaning survives punctuation stripping
    "&": " and ",
    "@": " at ",
    "+": " plus ",
    "%": " percent ",
    "$": " dollar ",
    "#": " number ",
}
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                         "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "`": "'",
                         "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " "})
_SYMBOL_RE = re.compile("|".join(re.escape(s) for s in SYMBOLS))

NAMING_VERBS = ("reads", "read", "reading", "says", "say", "saying", "said", "written", "writes", "writing",
                "labeled", "labelled", "marked", "titled", "named", "called", "spelling", "spells", "displays",
                "displaying", "advertising", "advertises")
_VERB = r"\b(?i:" + "|".join(NAMING_VERBS) + r")\b"  # case-insensitive for the verb only
# the verb (kept) + optional ':' + a quoted span (dropped; may hold punctuation, never a newline)
_QUOTED_AFTER_VERB = re.compile(_VERB + r"\s*:?\s*\"[^\"\n]*\"?")
# the verb (kept) + a run of Capitalised words / numbers (dropped)
_CAPS_AFTER_VERB = re.compile(r"(" + _VERB + r")(?:\s+(?:[A-Z][\w'.-]*|\d[\w.-]*))+")
# a run of Capitalised words after a lower-case word or , ; (so never the caption's first word)
_CAP_WORDS = re.compile(r"(?<=[a-z,;])\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*")
_PUNCT_CHARS = re.compile(r"[^\w\s'-]|_")  # everything but letters, digits, space, ' and -
_LOOSE_MARKS = re.compile(r"(?<![A-Za-z0-9])['-]|['-](?![A-Za-z0-9])")  # ' and - not inside a word


def fix_symbols(text: str) -> str:
    """HTML entities, curly quotes/dashes and NFKC width forms -> ASCII; ``&`` etc. -> words."""
    text = unicodedata.normalize("NFKC", html.unescape(text)).translate(_QUOTES)
    return _SYMBOL_RE.sub(lambda m: SYMBOLS[m.group(0)], text)


def _keep_verb(match: re.Match) -> str:
    return re.match(_VERB, match.group(0)).group(0)


def drop_entity_mentions(text: str) -> str:
    """Drop what a sign/label *says* (see the module docstring); the naming verb stays."""
    text = _QUOTED_AFTER_VERB.sub(_keep_verb, text)
    return _CAPS_AFTER_VERB.sub(r"\1", text)


def drop_proper_nouns(text: str) -> str:
    """Drop runs of Capitalised words that follow a lower-case word (never the first word)."""
    return _CAP_WORDS.sub(" ", text)


def strip_punctuation(text: str) -> str:
    """Punctuation -> space; apostrophes and hyphens survive only inside words (``it's``, ``low-lying``)."""
    return _LOOSE_MARKS.sub(" ", _PUNCT_CHARS.sub(" ", text))


def lowercase(text: str) -> str:
    return text.lower()


def normalize_whitespace(text: str) -> str:
    """Raw newlines, tabs and runs of spaces -> one space; trimmed."""
    return " ".join(text.split())


#: field of CaptionCleaner -> step, in the order they run
CLEANING_STEPS: dict[str, Callable[[str], str]] = {
    "fix_symbols": fix_symbols,
    "drop_entity_mentions": drop_entity_mentions,
    "drop_proper_nouns": drop_proper_nouns,
    "strip_punctuation": strip_punctuation,
    "lowercase": lowercase,
    "normalize_whitespace": normalize_whitespace,
}


@dataclass
class CaptionCleaner:
    """Which cleaning steps run (the paper's defaults). Call it on a caption or use :meth:`clean_all`.

    ``lowercase`` is off because the uncased tokenizers lower-case anyway and a cased model
    (DeBERTa) should see the case. A caption that cleans to nothing falls back to its
    whitespace-normalised original, because an empty input would give the model no tokens at all.
    """

    fix_symbols: bool = True
    drop_entity_mentions: bool = True
    drop_proper_nouns: bool = False
    strip_punctuation: bool = True
    lowercase: bool = False
    normalize_whitespace: bool = True

    def check(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name}: must be true or false (got {getattr(self, f.name)!r})")

    @property
    def steps(self) -> list[str]:
        return [name for name in CLEANING_STEPS if getattr(self, name)]

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"caption must be a string, got {type(text).__name__}")
        out = text
        for name in self.steps:
            out = CLEANING_STEPS[name](out)
        return out if out.strip() else normalize_whitespace(text)

    def clean_all(self, captions: Sequence[str]) -> list[str]:
        return [self(c) for c in captions]

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------


