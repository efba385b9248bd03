"""A synthetic dataset in the exact competition layout, so the whole study runs without the real data.

``python -m mlc_utils demo-data --out DIR [--n N] [--seed S] [--test-fraction F] [--force]`` writes::

    DIR/train.csv          ImageID,Labels,Caption   (competition dialect, see mlc_utils.data.csvio)
    DIR/test.csv           ImageID,Caption          (no labels, as on Kaggle)
    DIR/data/<ImageID>     JPEG images; train ids 0..n_train-1 first, test ids after them
    DIR/test_labels.csv    EXTRA (not in the real layout): the hidden test truth, ImageID,Labels,
                           in the same dialect, so tests and reports can score a submission
    DIR/demo_dataset.json  EXTRA: marks the folder as a demo dataset (generator, seed, n, ...)

Content, modelled on the real MS-COCO-derived data (class ids are the COCO ids 0..19, see
:data:`CLASS_NAMES`): class 1 ("person") on about 75% of the images, classes 0 and 12 never, a
long tail for the rest (car .14, truck .07, bench .065, ..., parking meter .008), 1 to 4 labels per
image, written in a random order as in the real file ("8 3 7").

Each class is one distinctive object (shape x colour x texture: a red octagon with a white rim for
"stop sign", a yellow striped bar for "bus", a two-tone figure for "person", ...) drawn at random
positions, scales and rotations, with colour jitter, occlusion and clipping at the border, on a
noisy gradient background with clutter; image sizes vary (96-160 x 80-140 px).

Captions mention the objects imperfectly: several synonyms per class (some shared: "a vehicle" for
car and truck), about a quarter of the objects left out, negated distractors ("with no dog in
sight"), a few wrong mentions. The two modalities are made complementary on purpose: a *small*
object (hard to see) is usually mentioned, a large one (easy to see) is the one most often left
out, so an image-only and a caption-only model are both good but imperfect, with different errors.

A small, seed-determined share of captions carries the real files' quirks: unescaped inner quotes
(``a sign that reads "STOP" on it``), a caption ending in a quoted word, raw newlines, a blank
line, a trailing ``/``, commas. Every quirk occurs at least once in each dataset.

The same seed gives byte-identical files (every image draws from its own ``(seed, index)`` random
stream). The dataset is built in a temporary sibling folder and then moved in, so a killed run
never leaves a half-written dataset behind.

One module per job: :mod:`.labels` (labels and objects), :mod:`.drawing` (images), :mod:`.captions`,
:mod:`.quirks`, :mod:`.writer` (the rows and files), :mod:`.command` (the command line); this
package gives what its callers use.
"""
from mlc_utils.data.demo.captions import SYNONYMS
from mlc_utils.data.demo.command import cli
from mlc_utils.data.demo.labels import CLASS_NAMES, NUM_CLASSES
from mlc_utils.data.demo.quirks import QUIRKS, caption_quirks
from mlc_utils.data.demo.writer import (
    DEFAULT_N,
    DEFAULT_TEST_FRACTION,
    MARKER,
    MIN_N,
    DemoDirError,
    demo_rows,
    make_demo_dataset,
    split_sizes,
)

__all__ = ["CLASS_NAMES", "DEFAULT_N", "DEFAULT_TEST_FRACTION", "MARKER", "MIN_N", "NUM_CLASSES", "QUIRKS", "SYNONYMS",
           "DemoDirError", "caption_quirks", "cli", "demo_rows", "make_demo_dataset", "split_sizes"]
