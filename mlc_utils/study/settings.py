"""The settings a run used, in words: a notebook's opening lines and the report's method table and note.

Read from the parameters only, so the notebooks and the report describe the same run the same way.
"""
from __future__ import annotations

import pandas as pd


def settings_markdown(ctx) -> str:
    """A few lines of Markdown: the run, its data, the params file and this stage's settings."""
    from mlc_utils.core.config import to_dict
    section = to_dict(ctx.settings) if hasattr(ctx.params, ctx.stage) else {}
    lines = [f"**Run** `{ctx.params.run}` on `{ctx.params.data_path(ctx.root).resolve()}`, "
             f"params `{ctx.params.source or 'defaults'}`, seed {ctx.params.seed}."]
    for key, value in section.items():
        if key == "models" and isinstance(value, list):
            for model in value:
                lines.append(f"- model **{model.get('label') or model.get('name')}**: `{model.get('name')}`, "
                             f"{model.get('mode', '')}, {model.get('img_size', '')} px, pretrained "
                             f"{model.get('pretrained')}" + (f", own training {_given(model.get('train'))}"
                                                              if _given(model.get('train')) else ""))
        elif key == "train" and isinstance(value, dict):
            if _given(value):
                lines.append(f"- training: {_given(value)}")
        elif value not in (None, "", [], {}):
            lines.append(f"- {key.replace('_', ' ')}: {value if not isinstance(value, list) else ', '.join(map(str, value))}")
    return "\n".join(lines)


def _given(train) -> str:
    if not isinstance(train, dict):
        return ""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in train.items() if v is not None)


IMAGE_HEADS = {"extra_linear": "Linear on the ImageNet logits", "replace": "Linear on {pool} pooling",
               "class_attention": "class attention over regions"}


def _image_head(spec) -> str:
    """The head in words, as the method table names it."""
    return IMAGE_HEADS[spec.head].format(pool=spec.global_pool or "the model's own")


def method_frame(params) -> pd.DataFrame:
    """The models the run trained: kind, architecture, weights, resolution and training settings."""
    from mlc_utils.core.config import to_dict
    image_train = _given(to_dict(params.image.train)) if hasattr(params, "image") else ""
    rows = []
    for spec in getattr(params.image, "models", []):
        rows.append({"input": "image", "model": spec.label, "architecture": f"{spec.name}, {_image_head(spec)}",
                     "mode": spec.mode,
                     "weights": "ImageNet (pretrained)" if spec.pretrained is True else
                     ("random init" if spec.pretrained is False else str(spec.pretrained)),
                     "resolution": f"{spec.img_size} px", "training": "; ".join(
                         s for s in (image_train, _given(to_dict(spec.train))) if s)})
    caption = params.caption
    for kind in getattr(caption, "members", ["finetune"]):
        tfidf = kind == "tfidf"
        training = {"finetune": _given(to_dict(caption.train)), "frozen_encoder": _given(to_dict(caption.head_train)),
                    "tfidf": f"logistic regression per label, C {caption.tfidf_c}"}[kind]
        rows.append({"input": "caption", "model": f"caption ({kind})",
                     "architecture": "TF-IDF word 1-2 + character 2-5 grams" if tfidf else caption.model_name,
                     "mode": kind, "weights": "" if tfidf else ("pretrained" if caption.pretrained else "random init"),
                     "resolution": "" if tfidf else f"{getattr(caption, 'max_length', '')} tokens", "training": training})
    fusion = params.fusion
    rows.append({"input": "image+caption", "model": ", ".join(fusion.heads) + ", late fusion",
                 "architecture": f"heads on {fusion.fusion_input}", "mode": fusion.mode, "weights": "",
                 "resolution": "", "training": _given(to_dict(fusion.train))})
    return pd.DataFrame(rows)


def method_note(params) -> str:
    """The settings the method table leaves out: evaluation views, the ensemble, the seed."""
    ensemble = params.ensemble
    members = ", ".join(ensemble.members) if ensemble.members else "every saved model"
    return (f"Image models are evaluated on the views {', '.join(params.image.tta) or 'center'} (averaged); "
            f"the ensemble weighs {members} by {ensemble.weights} weights and applies "
            f"{'one threshold per class' if ensemble.per_class_thresholds else 'one threshold'} tuned on validation. "
            f"Seed {params.seed}." + (f" The split keeps {params.split.val_fraction:.0%} of the labelled images for "
                                      f"validation ({getattr(params.split, 'method', '')})."
                                      if isinstance(getattr(params.split, "val_fraction", None), float) else ""))
