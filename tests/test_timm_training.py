"""Training large transformers as timm does: parameter groups, layer decay, per-update schedules."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from conftest import assert_resumed_like_straight
from test_loop import make_data, quiet, tiny_model
from torch import nn

from mlc_utils.models.checkpoint import read_checkpoint
from mlc_utils.models.image import ImageModel, prefix_matcher
from mlc_utils.train import loop, optim
from mlc_utils.train.config import TrainConfig
from mlc_utils.train.loop import fit

torch.set_num_threads(1)


def _wrapped(name: str, **kwargs) -> ImageModel:
    """A timm backbone with random weights inside the study's ImageModel (extra linear head)."""
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    return ImageModel(backbone, nn.Linear(backbone.num_classes, 4), {"kind": "image", "arch": name})


def _groups(model, **cfg) -> dict[str, dict]:
    """parameter name -> its optimizer group's weight_decay and lr_scale."""
    optimizer = optim.OPTIMIZERS["timm_adamw"](model, TrainConfig(optimizer="timm_adamw", **cfg))
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: {"wd": by_id[id(p)]["weight_decay"], "scale": by_id[id(p)].get("lr_scale", 1.0)}
            for n, p in model.named_parameters()}


def test_timm_adamw_keeps_norms_biases_and_position_tables_free_of_decay():
    vit = _groups(_wrapped("test_vit"), weight_decay=0.05)
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.blocks.0.norm1.weight",
                 "backbone.blocks.0.attn.qkv.bias", "head.bias"):
        assert vit[name]["wd"] == 0.0, name
    assert vit["backbone.blocks.0.attn.qkv.weight"]["wd"] == 0.05
    assert vit["head.weight"]["wd"] == 0.05
    swin = _groups(_wrapped("swin_tiny_patch4_window7_224", img_size=56, embed_dim=16, depths=(1, 1),
                            num_heads=(1, 2)), weight_decay=0.05)
    tables = [n for n in swin if "relative_position_bias_table" in n]
    assert tables and all(swin[n]["wd"] == 0.0 for n in tables)


def test_layer_decay_gives_earlier_blocks_smaller_rates():
    groups = _groups(_wrapped("test_vit"), weight_decay=0.05, layer_decay=0.5)
    scale = lambda name: groups[name]["scale"]  # noqa: E731
    assert scale("backbone.patch_embed.proj.weight") < scale("backbone.blocks.0.attn.qkv.weight")
    assert scale("backbone.blocks.0.attn.qkv.weight") < scale(f"backbone.blocks.{_last_block()}.attn.qkv.weight")
    assert scale("head.weight") == 1.0
    assert scale("backbone.blocks.0.attn.qkv.weight") == pytest.approx(
        0.5 * scale("backbone.blocks.1.attn.qkv.weight"))


def _last_block() -> int:
    return len(timm.create_model("test_vit").blocks) - 1


def test_caption_encoder_gets_decay_free_norms_and_layer_decay():
    from mlc_utils.models.caption import create_caption_model
    model = create_caption_model("all-MiniLM-L6-v2", 4, pretrained=False)
    groups = _groups(model, weight_decay=0.01, layer_decay=0.8)
    assert groups["encoder.embeddings.LayerNorm.weight"]["wd"] == 0.0
    assert groups["encoder.encoder.layer.0.attention.self.query.bias"]["wd"] == 0.0
    assert groups["encoder.encoder.layer.0.attention.self.query.weight"]["wd"] == 0.01
    assert groups["encoder.embeddings.word_embeddings.weight"]["scale"] < \
        groups["encoder.encoder.layer.0.attention.self.query.weight"]["scale"] < \
        groups["encoder.encoder.layer.1.attention.self.query.weight"]["scale"] < groups["head.weight"]["scale"]


def test_layer_decay_on_a_model_without_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="layer_decay: TinyNet has no group_matcher"):
        optim.OPTIMIZERS["timm_adamw"](tiny_model(), TrainConfig(optimizer="timm_adamw", layer_decay=0.7))
    with pytest.raises(ValueError, match="layer_decay: needs optimizer: timm_adamw"):
        TrainConfig(layer_decay=0.7).check()
    with pytest.raises(ValueError, match="warmup_steps: counts optimizer updates"):
        TrainConfig(warmup_steps=10).check()
    with pytest.raises(ValueError, match="warmup_epochs: counts epochs"):
        TrainConfig(schedule_unit="step", warmup_epochs=1).check()


def test_prefix_matcher_moves_every_pattern_under_the_wrapper():
    matcher = {"stem": r"^patch_embed", "blocks": [(r"^layers\.(\d+)", None), (r"^norm", (99999,))]}
    assert prefix_matcher(matcher, "backbone.") == {
        "stem": r"^backbone\.(?:patch_embed)",
        "blocks": [(r"^backbone\.(?:layers\.(\d+))", None), (r"^backbone\.(?:norm)", (99999,))]}


def _rates(cfg: TrainConfig, updates: int, epoch_of=lambda k: 0, scale: float | None = None) -> list[float]:
    group = {"params": [nn.Parameter(torch.zeros(1))], **({"lr_scale": scale} if scale else {})}
    optimizer = torch.optim.AdamW([group], lr=cfg.lr)
    schedule = optim.SCHEDULE_UNITS[cfg.schedule_unit](optimizer, cfg, updates // cfg.epochs)
    rates = []
    for k in range(updates):
        schedule.step_update(k, epoch_of(k))
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_per_update_schedule_warms_up_then_follows_the_cosine():
    cfg = TrainConfig(lr=1e-3, epochs=2, schedule_unit="step", scheduler="cosine", warmup_steps=2,
                      warmup_lr=0.0, min_lr=1e-5)
    rates = _rates(cfg, 10)  # 5 updates per epoch; cosine over the 8 after warmup
    cosine = lambda t: 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 8))  # noqa: E731
    assert rates[0] == pytest.approx(0.0)
    assert rates[1] == pytest.approx(5e-4)
    assert rates[2] == pytest.approx(1e-3)
    assert rates[6] == pytest.approx(cosine(4))
    assert rates[9] == pytest.approx(cosine(7))
    assert _rates(cfg, 10, scale=0.25)[2] == pytest.approx(2.5e-4)  # layer decay's lr_scale applies


def test_per_update_step_schedule_decays_every_step_size_epochs():
    cfg = TrainConfig(lr=1e-3, epochs=4, schedule_unit="step", scheduler="step", step_size=2, gamma=0.5)
    rates = _rates(cfg, 12)  # 3 updates per epoch: decays after 6 updates
    assert rates[:6] == pytest.approx([1e-3] * 6) and rates[6:] == pytest.approx([5e-4] * 6)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_paper_steplr_per_epoch_is_unchanged():
    """step 8, gamma 0.5 per epoch, as torch's StepLR, on the default (epoch) path."""
    cfg = TrainConfig(lr=1e-5, epochs=20, scheduler="step", step_size=8, gamma=0.5)
    ours = optim.SCHEDULE_UNITS["epoch"](torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr), cfg, 1)
    reference_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    reference = torch.optim.lr_scheduler.StepLR(reference_opt, step_size=8, gamma=0.5)
    for _ in range(cfg.epochs):
        assert ours.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
        ours.step()
        reference.step()


def test_fit_applies_the_per_update_schedule(tmp_path):
    cfg = quiet(epochs=2, optimizer="timm_adamw", weight_decay=0.05, schedule_unit="step", scheduler="cosine",
                warmup_steps=3, warmup_lr=1e-4)
    result = fit(tiny_model(), make_data(), make_data(16, 1), cfg, tmp_path)
    assert result.history[0]["lr"] == pytest.approx(1e-4)  # epoch 0 starts warming up
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["scheduler"]["t_initial"] == 8 - 3  # 4 updates per epoch x 2 epochs, less warmup


def _step_cfg(**kwargs) -> TrainConfig:
    return quiet(mixup=True, ema=True, ema_decay=0.9, optimizer="timm_adamw", weight_decay=0.05,
                 schedule_unit="step", scheduler="cosine", warmup_steps=2, warmup_lr=1e-4, **kwargs)


def test_resume_with_the_per_update_schedule_is_exact(tmp_path, monkeypatch):
    train, val = make_data(), make_data(16, seed=1)
    straight = fit(tiny_model(dropout=0.2), train, val, _step_cfg(epochs=3), tmp_path / "straight")
    save = loop._Trainer.save

    def save_then_stop(self, epoch, is_best, probs):  # an interruption after epoch 2 was saved
        save(self, epoch, is_best, probs)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(loop._Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(dropout=0.2), train, val, _step_cfg(epochs=3), tmp_path / "split")
    monkeypatch.setattr(loop._Trainer, "save", save)
    resumed = fit(tiny_model(seed=99, dropout=0.2), train, val, _step_cfg(epochs=3, resume=True),
                  tmp_path / "split")
    last = assert_resumed_like_straight(straight, resumed, tmp_path / "straight", tmp_path / "split")
    assert last["straight"]["scheduler"] == last["resumed"]["scheduler"]
    assert last["straight"]["global_step"] == 12
