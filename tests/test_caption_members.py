"""The cheap caption members: TF-IDF with a logistic regression per label, and a head on frozen embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc_utils.core.inference import Inference
from mlc_utils.models.tfidf import TfidfCaptionClassifier

CAPTIONS = ["a man riding a motorcycle down a street", "a dog sitting on a couch", "a red car parked by the road",
            "two men riding motorcycles", "a brown dog playing in the grass", "cars and a bus in traffic",
            "a person on a motorbike", "a dog with a frisbee", "a car next to a truck"] * 3
# labels: 0 never occurs (like labels 0 and 12 of the real data), 1 motorcycle, 2 dog, 3 car
LABELS = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                   [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] * 3, dtype=np.float32)


def test_tfidf_learns_the_words_and_gives_unseen_labels_zero(tmp_path):
    model = TfidfCaptionClassifier(num_classes=4, C=10.0, min_df=1).fit(CAPTIONS, LABELS)
    probs = model.predict_proba(["a dog on a bed", "a car on the road", "a man on a motorcycle"])
    assert probs.shape == (3, 4) and probs.dtype == np.float32
    assert (probs[:, 0] == 0).all()  # never in the training rows: cannot be predicted
    assert list(probs[:, 1:].argmax(axis=1) + 1) == [2, 3, 1]
    again = TfidfCaptionClassifier.load(model.save(tmp_path / "m" / "model.joblib"))
    np.testing.assert_array_equal(again.predict_proba(["a dog on a bed"]), probs[:1])
    assert model.predict_proba([]).shape == (0, 4)


def test_tfidf_rejects_bad_input_with_the_parameter_named(tmp_path):
    with pytest.raises(ValueError, match=r"y: expected shape \(27, 5\), got \(27, 4\)"):
        TfidfCaptionClassifier(num_classes=5).fit(CAPTIONS, LABELS)
    with pytest.raises(ValueError, match="y: no label occurs"):
        TfidfCaptionClassifier(num_classes=4).fit(CAPTIONS, np.zeros_like(LABELS))
    with pytest.raises(ValueError, match="C: must be > 0"):
        TfidfCaptionClassifier(C=0)
    with pytest.raises(RuntimeError, match="call fit"):
        TfidfCaptionClassifier().predict_proba(["x"])
    path = tmp_path / "other.joblib"
    import joblib
    joblib.dump({"not": "a model"}, path)
    with pytest.raises(TypeError, match="holds a dict, not a TfidfCaptionClassifier"):
        TfidfCaptionClassifier.load(path)


def test_frozen_embeddings_and_head_are_the_models_own():
    from mlc_utils.models.caption import CaptionEmbeddingHead, caption_dataset_for, create_caption_model, embed_captions
    torch.manual_seed(0)
    model = create_caption_model("all-MiniLM-L6-v2", 4, pretrained=False, max_length=16).eval()
    embeddings = embed_captions(model, CAPTIONS[:5], Inference("cpu", batch_size=2), progress=False)
    assert embeddings.shape == (5, model.feature_dim) and embeddings.dtype == np.float32
    assert embed_captions(model, [], Inference("cpu"), progress=False).shape == (0, model.feature_dim)
    head = CaptionEmbeddingHead(model).eval()
    assert head.head is model.head  # training the head trains the saved model's head
    dataset = caption_dataset_for(model, CAPTIONS[:5])
    inputs = {k: torch.stack([dataset[i][0][k] for i in range(5)]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():  # the head on embeddings computes what the whole model computes
        torch.testing.assert_close(head(torch.from_numpy(embeddings)), model(inputs), atol=1e-5, rtol=1e-4)
    assert not model.training
