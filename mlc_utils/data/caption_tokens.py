"""Captions as model inputs: cleaned, tokenized once, and batched with only the padding a batch needs."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mlc_utils.data.captions import CaptionCleaner


class CaptionDataset(Dataset):
    """Captions tokenized once up front; yields ``({"input_ids", "attention_mask"}, target)``.

    Every item is padded to ``max_length`` so the default collate works; pass
    :func:`trim_padding_collate` to ``fit(collate_fn=...)`` to cut each batch to its longest caption
    (short COCO captions make that ~2x faster at max_length 48). Without ``targets`` (the test
    set) the target is a zero vector, so prediction code can treat both sets alike.
    """

    def __init__(self, captions: Sequence[str], tokenizer, targets: np.ndarray | None = None,
                 max_length: int = 48, cleaner: CaptionCleaner | None = None, num_classes: int | None = None):
        captions = list(captions)
        if max_length < 2:
            raise ValueError(f"max_length: must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float32)
            if targets.ndim != 2 or len(targets) != len(captions):
                raise ValueError(f"targets: expected shape ({len(captions)}, C), got {targets.shape}")
        elif num_classes is None:
            raise ValueError("num_classes: needed when no targets are given (the test set)")
        self.cleaner = cleaner if cleaner is not None else CaptionCleaner()
        self.texts = self.cleaner.clean_all(captions)
        self.max_length = max_length
        encoded = tokenizer(self.texts, padding="max_length", truncation=True, max_length=max_length,
                            return_tensors="pt")
        self.input_ids = encoded["input_ids"]
        self.attention_mask = encoded["attention_mask"]
        n_classes = targets.shape[1] if targets is not None else num_classes
        self.targets = torch.from_numpy(targets) if targets is not None else torch.zeros(len(captions), n_classes)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int):
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}, self.targets[index]

    @property
    def truncated_fraction(self) -> float:
        """Share of captions that fill all ``max_length`` tokens, i.e. were (probably) cut: a check on max_length."""
        return float((self.attention_mask[:, -1] == 1).float().mean()) if len(self) else 0.0



def trim_padding_collate(batch):
    """Stack a batch and drop the padding columns that no caption in it uses."""
    inputs = {key: torch.stack([item[0][key] for item in batch]) for key in batch[0][0]}
    targets = torch.stack([item[1] for item in batch])
    width = max(int(inputs["attention_mask"].sum(dim=1).max()), 1)
    return {key: value[:, :width] for key, value in inputs.items()}, targets
