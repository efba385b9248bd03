"""The explore stage (08_explore): browse a run's validation mistakes, class by class or image by
image, with the image, its caption, the truth and every model's scores.

The notebook builds ipywidgets on top of :class:`Explorer`; the same calls run top to bottom under
papermill (the first class and the first case are shown), so the stage also runs in ``run``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlc_utils.data.labels import decide
from mlc_utils.evaluation.ensemble import Member

KINDS = ("false negatives", "false positives")


@dataclass
class Explorer:
    val: pd.DataFrame              # ImageID, Caption, Labels of the validation rows
    y_val: np.ndarray              # (n, C) truth
    members: dict[str, Member]     # by name: every saved model of the run, the ensemble last
    names: tuple[str, ...] = ()    # class names (optional)

    def probs(self, model: str) -> np.ndarray:
        return self.members[model].val_probs

    def class_label(self, c: int) -> str:
        return f"{c} ({self.names[c]})" if self.names and c < len(self.names) else str(c)

    def class_options(self) -> list[tuple[str, int]]:
        """(label, class) for every class with a validation image, most common first."""
        support = self.y_val.sum(0)
        order = np.argsort(-support, kind="stable")
        return [(f"{self.class_label(int(c))}: {int(support[c])} images", int(c)) for c in order if support[c] > 0]

    def cases(self, model: str, c: int, kind: str = KINDS[0], threshold: float = 0.5) -> pd.DataFrame:
        """The validation rows where ``model`` misses class ``c`` (false negatives) or adds it
        wrongly (false positives), most confident mistakes first."""
        if kind not in KINDS:
            raise ValueError(f"kind: one of {KINDS} (got {kind!r})")
        truth = self.y_val[:, c] > 0.5
        score = self.probs(model)[:, c]
        predicted = self.predicted(model, threshold)
        mask = truth & ~predicted[:, c] if kind == KINDS[0] else ~truth & predicted[:, c]
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(score[rows] if kind == KINDS[0] else -score[rows], kind="stable")]
        return pd.DataFrame({"row": rows, "ImageID": self.val.ImageID.to_numpy()[rows],
                             "score": score[rows], "truth": [self._labels(self.y_val[i] > 0.5) for i in rows],
                             "predicted": [self._labels(predicted[i]) for i in rows]})

    def predicted(self, model: str, threshold: float = 0.5) -> np.ndarray:
        """``model``'s labels at ``threshold`` by the submission's rule (:func:`~mlc_utils.data.labels.decide`)."""
        return decide(self.probs(model), threshold)

    def mistake_counts(self, threshold: float = 0.5) -> pd.DataFrame:
        """Rows: models; columns: classes with a validation image; cells: "FN a / FP b"."""
        return pd.DataFrame({label: [f"FN {len(self.cases(m, c, KINDS[0], threshold))} / "
                                     f"FP {len(self.cases(m, c, KINDS[1], threshold))}" for m in self.members]
                             for label, c in self.class_options()}, index=list(self.members))

    def image_row(self, image_id: str) -> int:
        found = np.flatnonzero(self.val.ImageID.to_numpy() == image_id)
        if not len(found):
            raise KeyError(f"{image_id} is not a validation image")
        return int(found[0])

    def scores(self, row: int, top: int = 6) -> pd.DataFrame:
        """Every model's scores for one validation image on the classes that matter to it: its
        true labels and each model's highest scores."""
        classes = set(np.flatnonzero(self.y_val[row] > 0.5))
        for member in self.members.values():
            classes |= set(np.argsort(-member.val_probs[row])[:top // 2])
        classes = sorted(int(c) for c in classes)
        frame = pd.DataFrame({"class": [self.class_label(c) for c in classes],
                              "truth": [int(self.y_val[row, c] > 0.5) for c in classes]})
        for name, member in self.members.items():
            frame[name] = member.val_probs[row, classes]
        return frame

    def describe(self, row: int, model: str, threshold: float = 0.5) -> str:
        """One image in Markdown: id, caption, truth and the chosen model's prediction."""
        record = self.val.iloc[row]
        predicted = self._labels(self.predicted(model, threshold)[row])
        return (f"**{record.ImageID}**: \u201c{' '.join(str(record.Caption).split())}\u201d  \n"
                f"truth: {self._labels(self.y_val[row] > 0.5)}; {model} predicts: {predicted or '(nothing)'} "
                f"at {threshold:.2f}")

    def _labels(self, mask) -> str:
        return " ".join(self.class_label(int(c)) for c in np.flatnonzero(mask))


def load_explorer(ctx) -> Explorer:
    """Every saved model of the run (image, caption, fusion, the ensemble) on the validation rows."""
    from mlc_utils.study.ensemble import study_members
    from mlc_utils.study.members import load_member
    _, val_df, _, y_val = ctx.labelled_folds()
    members = {m.name: m for m in study_members(ctx)}
    ensemble = load_member(ctx.dir_of("ensemble"))
    if ensemble is not None:
        members[ensemble.name] = ensemble
    ids = list(val_df.ImageID)
    for name, member in members.items():
        if list(member.val_ids) != ids:
            raise ValueError(f"{name}: its validation rows are not the split's; re-run the stages")
    return Explorer(val_df, y_val, members, tuple(ctx.params.class_names))


def case_image(image_dir, image_id: str, size: int = 320):
    """The image as PNG bytes for ``display`` (longest side ``size`` px). Not a matplotlib figure: inside
    a widget's callback a figure reaches the page through the inline backend's own display hook, and
    under load the browser test saw the case's text and table arrive without it; one PNG output does not
    depend on that hook."""
    import io

    from IPython.display import Image as PNG
    from PIL import Image
    with Image.open(f"{image_dir}/{image_id}") as image:
        picture = image.convert("RGB")
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return PNG(data=buffer.getvalue(), format="png")
