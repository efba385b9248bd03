"""The ablation stage (06_ablation): the base image model with one switch flipped per row (Table 3)."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED
from mlc_utils.study.image import image_train_config, train_image
from mlc_utils.study.members import member_model, reuse_or_train

SWITCHES = {
    # switch -> (what it changes, function(spec) -> flipped spec)
    "mixup": ("mixup", lambda spec, ctx, alt: _with_train(spec, mixup=not _train_value(ctx, spec, "mixup"))),
    "randaugment": ("RandAugment", lambda spec, ctx, alt: replace(
        spec, auto_augment="" if spec.auto_augment else "rand-m9-mstd0.5")),
    "tta": ("test-time augmentation", lambda spec, ctx, alt: replace(spec, tta=not spec.tta)),
    "loss": ("loss", lambda spec, ctx, alt: _with_train(
        spec, loss=alt if _train_value(ctx, spec, "loss") != alt else "bce")),
}



def _train_value(ctx, spec, name: str):
    """A training setting of ``spec`` as the image stage trains it (the one merge of its settings)."""
    return getattr(image_train_config(ctx, spec), name)



def _with_train(spec, **changes):
    return replace(spec, train=replace(spec.train, **changes))



def _setting(ctx, spec, switch: str) -> str:
    if switch == "randaugment":
        return spec.auto_augment or "off"
    if switch == "tta":
        return "on" if spec.tta else "off"
    value = _train_value(ctx, spec, switch)
    return ("on" if value else "off") if isinstance(value, bool) else str(value)



def ablation_specs(ctx) -> list[tuple[str, object]]:
    """(row name, image model spec): the baseline, then one switch flipped per row."""
    ablation_params, stage = ctx.params.ablation, ctx.params.image
    if not stage.models:
        raise ValueError("ablation: the image stage lists no models to ablate (image.models is empty)")
    base = next((m for m in stage.models if m.label == ablation_params.base), None) if ablation_params.base else \
        next((m for m in stage.models if m.mode == "finetune"), stage.models[0])
    if base is None:
        raise ValueError(f"ablation.base: '{ablation_params.base}' is not one of the image models {[m.label for m in stage.models]}")
    base = _with_train(base, **ablation_params.train.given())
    rows = [("baseline", replace(base, label=f"{base.label}-baseline"))]
    for switch in ablation_params.switches:
        flipped = SWITCHES[switch][1](base, ctx, ablation_params.alt_loss)
        rows.append((switch, replace(flipped, label=f"{base.label}-{switch}")))
    return rows



def run_ablation(ctx, log=print) -> tuple[pd.DataFrame, list[Member]]:
    """Train each variant with the same seed and budget; the paper's Table 3 as differences to the baseline."""
    _, _, _, y_val = ctx.labelled_folds()
    members, rows = [], []
    specs = ablation_specs(ctx)
    base_label = specs[0][1].label[: -len("-baseline")]
    for switch, spec in specs:
        if switch == "tta" and spec.mode == "finetune":
            member = _repredict(ctx, members[0], spec, log)   # TTA changes prediction only: no retraining
        else:
            member = train_image(ctx, spec, ctx.stage_dir / spec.label, log,
                                 alternates=(ctx.dir_of("image") / base_label,), cross_validate=False)
        members.append(member)
        t, tuned = metrics.tune_global_threshold(y_val, member.val_probs)
        what = "baseline" if switch == "baseline" else SWITCHES[switch][0]
        rows.append({"variant": spec.label, "switch": what,
                     "setting": "; ".join(f"{SWITCHES[s][0]} {_setting(ctx, spec, s)}"
                                          for s in SWITCHES if s in ctx.params.ablation.switches) if switch == "baseline"
                     else _setting(ctx, spec, switch),
                     F1_AT_05: member.score(y_val), F1_TUNED: tuned, "seconds": round(member.seconds, 1)})
    table = pd.DataFrame(rows)
    table["delta vs baseline"] = table[F1_AT_05] - table[F1_AT_05].iloc[0]
    return table, members



def _repredict(ctx, trained: Member, spec, log) -> Member:
    """``trained``'s checkpoint predicting with ``spec``'s views (the TTA switch of the ablation)."""
    from mlc_utils.evaluation.predict import predict_images
    views = list(ctx.params.image.tta) if spec.tta else ["center"]
    out_dir = ctx.stage_dir / spec.label

    def run():
        import shutil

        from mlc_utils.core.io import atomic_save
        model = member_model(trained)
        root = ctx.params.data_path(ctx.root)
        out_dir.mkdir(parents=True, exist_ok=True)
        if (trained.out_dir / "log.csv").is_file():
            atomic_save(out_dir / "log.csv", lambda tmp: shutil.copyfile(trained.out_dir / "log.csv", tmp))
        log(f"{spec.label}: {trained.name}'s weights predicting with views {views}")
        return Member(spec.label, "image", out_dir, trained.val_ids,
                      predict_images(model, root, trained.val_ids, views, ctx.inference),
                      trained.test_ids, predict_images(model, root, trained.test_ids, views, ctx.inference),
                      info={**trained.info, "views": views, "weights_from": str(trained.out_dir)})
    return reuse_or_train(ctx, out_dir, {"from": trained.key, "views": views}, run, log, kind="image")
