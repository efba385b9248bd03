"""GPU time without the GPU: ``plan --gpu CARD`` on a machine without CUDA plans each GPU training from
published throughputs (``figures/``, their sources in ``figures/README.md``), scaled to the card.

Per sample on the reference card (timm's RTX 3090 AMP benchmark):
- a model in the table at its image size: the table's figure (published). Its training step is
  timm's benchmark step less its optimizer (SGD with momentum, memory traffic at the card's bandwidth);
  a forward row is the table's inference figure, or, where the table has none, the training figure
  times the ratio of the table's inference and training rows (estimated);
- another image model: its forward FLOPs (counted on the meta device) over those of the nearest row of
  the table (same model class, else same kind: transformer / convnet) times that row's seconds
  (estimated);
- the caption encoder: 2 FLOPs a parameter (less the embeddings, which are look-ups) a token, at the
  padded lengths of its batches, against the nearest transformer row in the same way (estimated).

To the card: every per-sample time is multiplied by the reference card's memory bandwidth over the
card's (the table's transformer rows keep the 3090's tensor cores busy a fifth to a half of a step;
the rest moves memory), then the run's own step is built from it: its per-GPU batch, its optimizer's
update (its weights, gradients and optimizer state read and written at the card's bandwidth), ``N``
processes at ``MULTI_GPU_EFFICIENCY`` of N times one GPU, the epochs, views and passes of the work
(:func:`.costs.training_seconds`, as a calibrated plan). Images are decoded by the loader's worker
processes alongside the GPU, so decoding adds no time.

The printed figure is the central one; the range beside it spans what the evidence spans:
- fast: each row's compute share (its FLOPs rate over the 3090's tensor peak) sped up by the card's
  tensor throughput, the rest by its bandwidth (timm's own RTX 4090 and RTX 3090 inference tables,
  same PyTorch, give Swin-L and Swin-V2-L 1.47x and 1.29x: this gives 1.44x and 1.27x, bandwidth
  alone 1.08x); ``MULTI_GPU_EFFICIENCY``'s high end; an estimated model at the best case of the FLOPs
  rule on the table itself (:func:`flops_rule_band`);
- slow: training steps at ``SLOW_SHARE`` of the central speed (the lent H100's Swin-T);
  ``MULTI_GPU_EFFICIENCY``'s low end; an estimated model at the rule's worst case.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlc_utils.study.plan.costs import IMAGE_KINDS, TRAINED, training_seconds

FIGURES = Path(__file__).with_name("figures")
REFERENCE_GPU = "rtx3090"            # the card of timm's benchmark table
BENCHMARK_OPTIMIZER_STATES = 1       # timm's benchmark.py trains with SGD + momentum: one state tensor
# A GPU's share of N x one GPU's speed with N processes: Lambda's PyTorch training benchmark
# (2 GPUs against 1, same cards and software) for BERT-base / BERT-large: 0.91-1.0 / 0.75-0.98 over
# eight kinds of card (figures/README.md). Swin-L and Swin-V2-L (197 M parameters) lie between them.
MULTI_GPU_EFFICIENCY = {"central": 0.90, "fast": 1.0, "slow": 0.75}
# The slow end of a training step: the slowest training measured on a lent GPU against this model's
# central figure, Swin-T through this project's fit on the H100 (taken as the SXM part, the "H100 80GB"
# benchmarks/README.md names): 1,608 img/s against 2,308 planned (scripts/gpu_check.sh).
SLOW_SHARE = 0.70
SCENARIOS = ("central", "fast", "slow")


@dataclass(frozen=True)
class Gpu:
    key: str
    aliases: tuple[str, ...]
    name: str
    memory_gb_s: float       # peak memory bandwidth
    tensor_tflops: float     # peak dense FP16/BF16 tensor throughput, FP32 accumulate
    memory_gb: float
    source: str

    def describe(self) -> str:
        return f"{self.name} ({self.memory_gb_s:,.0f} GB/s, {self.tensor_tflops:g} dense FP16/BF16 TFLOPS)"


@dataclass(frozen=True)
class Throughput:
    """A row of the published table."""
    arch: str                # timm's architecture name now
    benchmark_name: str      # as timm's benchmark CSV spells it
    mode: str                # train | infer
    images_per_s: float
    step_ms: float
    batch: int
    img_size: int
    params_millions: float
    forward_gflops: float    # counted here (torch.utils.flop_counter), not published
    model_class: str
    kind: str                # transformer | convnet

    @property
    def sample_s(self) -> float:
        """Seconds a sample, less the benchmark's optimizer step for a training row."""
        if self.mode == "infer":
            return 1.0 / self.images_per_s
        update = _update_bytes(self.params_millions * 1e6, 1 + BENCHMARK_OPTIMIZER_STATES) / reference_gpu().memory_gb_s / 1e9
        return 1.0 / self.images_per_s - update / self.batch

    def compute_share(self) -> float:
        """The share of the reference card's tensor peak this row's FLOPs rate uses (a training
        step is a forward and a backward of twice its FLOPs)."""
        flops = self.forward_gflops * 1e9 * (3 if self.mode == "train" else 1) * self.images_per_s
        return min(flops / (reference_gpu().tensor_tflops * 1e12), 1.0)

    def describe(self) -> str:
        return f"{self.benchmark_name} {self.img_size} px {self.mode} {self.images_per_s:,.1f} img/s"


@dataclass
class SampleCost:
    """What one sample costs on the reference card, and where the figure comes from."""
    train_s: float
    forward_s: float
    train_share: float       # compute share (Throughput.compute_share) of the row the figures come from
    forward_share: float
    published: bool          # the training figure is the table's own
    source: str
    band: tuple[float, float] = (1.0, 1.0)   # time multipliers (fast, slow) of an estimate
    params: int = 0          # where the plan has none (a caption encoder not available offline)

    def band_at(self, scenario: str) -> float:
        return {"central": 1.0, "fast": self.band[0], "slow": self.band[1]}[scenario]


def _rows(name: str) -> list[dict]:
    with open(FIGURES / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@cache
def gpus() -> dict[str, Gpu]:
    out = {}
    for r in _rows("gpus.csv"):
        out[r["key"]] = Gpu(r["key"], tuple(r["aliases"].split()), r["name"], float(r["memory_gb_s"]),
                            float(r["tensor_tflops"]), float(r["memory_gb"]), r["source"])
    return out


def reference_gpu() -> Gpu:
    return gpus()[REFERENCE_GPU]


def _spelling(name: str) -> str:
    return "".join(ch for ch in name.lower().replace("nvidia", "").replace("geforce", "") if ch.isalnum())


def gpu(name: str) -> Gpu:
    """The card ``name`` names (``a4000``, ``RTX 3090``, ``h100-pcie`` ...), or a ValueError listing them."""
    wanted = _spelling(name)
    for card in gpus().values():
        if wanted in {_spelling(n) for n in (card.key, *card.aliases)}:
            return card
    raise ValueError(f"--gpu: unknown card {name!r}; known: {', '.join(gpus())} (figures/gpus.csv)")


@cache
def throughputs() -> tuple[Throughput, ...]:
    return tuple(Throughput(r["arch"], r["timm_benchmark_name"], r["mode"], float(r["images_per_s"]),
                            float(r["step_ms"]), int(r["batch"]), int(r["img_size"]), float(r["params_millions"]),
                            float(r["forward_gflops"]), r["model_class"], r["kind"])
                 for r in _rows("timm_rtx3090_amp.csv"))


@cache
def caption_encoders() -> dict[str, dict]:
    return {r["name"].lower(): {k: int(v) for k, v in r.items() if k not in ("name", "source")}
            for r in _rows("caption_encoders.csv")}


def _update_bytes(n_params: float, copies: float) -> float:
    """Bytes one optimizer step moves: the weights and each state tensor read and written, the
    gradients read (``copies`` = weights + state tensors, as in a checkpoint), float32."""
    return 4 * n_params * (1 + 2 * copies)


def _train_rows() -> list[Throughput]:
    return [r for r in throughputs() if r.mode == "train"]


def _nearest(gflops: float, model_class: str, kind: str, exclude: Throughput | None = None) -> Throughput:
    """The training row nearest in forward FLOPs: of the same model class, else of the same kind, else any."""
    rows = [r for r in _train_rows() if r is not exclude]
    for pool in ([r for r in rows if r.model_class == model_class], [r for r in rows if r.kind == kind], rows):
        if pool:
            return min(pool, key=lambda r: abs(math.log(gflops / r.forward_gflops)))
    raise ValueError("figures/timm_rtx3090_amp.csv has no training rows")


@cache
def flops_rule_band() -> tuple[float, float]:
    """How far the FLOPs rule misses on the table itself: every training row predicted from its
    nearest other row, the (lowest, highest) ratio of the table's time over the predicted one (the
    time multipliers an estimate's range takes: 0.78 and 1.49 with the shipped table)."""
    ratios = [1.0]
    for row in _train_rows():
        other = _nearest(row.forward_gflops, row.model_class, row.kind, exclude=row)
        ratios.append(row.sample_s / (other.sample_s * row.forward_gflops / other.forward_gflops))
    return min(ratios), max(ratios)


@cache
def infer_per_train() -> float:
    """Training seconds a sample over inference seconds a sample, the geometric mean of the table's pairs."""
    pairs = [(t, i) for t in _train_rows() for i in throughputs()
             if i.mode == "infer" and (i.arch, i.img_size) == (t.arch, t.img_size)]
    return math.exp(sum(math.log(t.sample_s / i.sample_s) for t, i in pairs) / len(pairs))


def _forward_row(arch: str, img_size: int) -> Throughput | None:
    return next((r for r in throughputs() if r.mode == "infer" and (r.arch, r.img_size) == (arch, img_size)), None)


def image_cost(arch: str, img_size: int, facts=None) -> SampleCost:
    """A sample of the timm architecture ``arch`` (a pretrained tag after the dot is ignored) at
    ``img_size``: the table's figures where it has them, else ``facts()`` ((forward GFLOPs, model
    class, kind), worked out only when needed) against the nearest row."""
    arch = arch.split(".")[0]
    row = next((r for r in _train_rows() if (r.arch, r.img_size) == (arch, img_size)), None)
    if row is not None:
        infer = _forward_row(arch, img_size)
        forward_s = infer.sample_s if infer else row.sample_s / infer_per_train()
        source = f"published: timm's RTX 3090 AMP benchmark, {row.describe()}" + \
            (f", infer {infer.images_per_s:,.1f} img/s" if infer else
             f"; inference estimated at {infer_per_train():.1f}x the training rate (the table's pairs)")
        return SampleCost(row.sample_s, forward_s, row.compute_share(),
                          infer.compute_share() if infer else row.compute_share(), True, source)
    flops, model_class, kind = facts()
    same = [r for r in _train_rows() if r.arch == arch]    # the same network at another size, if there is one
    near = min(same, key=lambda r: abs(math.log(flops / r.forward_gflops))) if same else \
        _nearest(flops, model_class, kind)
    scale = flops / near.forward_gflops
    infer = _forward_row(near.arch, near.img_size)
    forward_s = (infer.sample_s if infer else near.sample_s / infer_per_train()) * scale
    return SampleCost(near.sample_s * scale, forward_s, near.compute_share(),
                      infer.compute_share() if infer else near.compute_share(), False,
                      f"estimated: {flops:.1f} GFLOPs a {img_size} px image, {scale:.2f}x {near.describe()} "
                      f"({near.forward_gflops:.1f} GFLOPs)", flops_rule_band())


def caption_cost(name: str, non_embedding_params: int, train_length: int, eval_length: int,
                 params: int = 0) -> SampleCost:
    """A caption of the encoder ``name``: 2 FLOPs a parameter a token forward (attention's own
    products, under 2% at 64 tokens, left out), against the nearest transformer row."""
    def gflops(length: int) -> float:
        return 2 * non_embedding_params * length / 1e9
    near = _nearest(gflops(train_length), "", "transformer")
    infer = _forward_row(near.arch, near.img_size)
    near_forward_s = infer.sample_s if infer else near.sample_s / infer_per_train()
    return SampleCost(near.sample_s * gflops(train_length) / near.forward_gflops,
                      near_forward_s * gflops(eval_length) / near.forward_gflops,
                      near.compute_share(), infer.compute_share() if infer else near.compute_share(), False,
                      f"estimated: {name}, {non_embedding_params / 1e6:.0f} M parameters besides the embeddings "
                      f"x {train_length} tokens = {gflops(train_length):.1f} GFLOPs a caption, against "
                      f"{near.describe()} ({near.forward_gflops:.1f} GFLOPs)", flops_rule_band(), params)


def encoder_size(name: str) -> tuple[int, int]:
    """(parameters besides the embeddings, all parameters) of a caption encoder in the table, from its
    configuration: each layer's attention (4 h^2) and feed-forward (2 h i) weights."""
    found = caption_encoders().get(name.split("/")[-1].lower())
    if found is None:
        raise KeyError(name)
    h, layers = found["hidden"], found["layers"]
    body = layers * (4 * h * h + 2 * h * found["intermediate"])
    return body, body + (found["vocab"] + found["positions"]) * h


def card_multipliers(card: Gpu, share: float) -> dict[str, float]:
    """Time on ``card`` over time on the reference card, by scenario (module docstring)."""
    ref = reference_gpu()
    bandwidth = ref.memory_gb_s / card.memory_gb_s
    blend = share * ref.tensor_tflops / card.tensor_tflops + (1 - share) * bandwidth
    return {"central": bandwidth, "fast": min(bandwidth, blend), "slow": max(bandwidth, blend)}


def train_batch_seconds(cost: SampleCost, card: Gpu, batch: int, n_params: float, copies: float = 3,
                        processes: int = 1) -> dict[str, float]:
    """Seconds of one training step of each process on ``card``, by scenario: ``batch`` samples, the
    optimizer's update of ``n_params`` weights with ``copies`` tensors of their size (weights + AdamW's
    two moments: 3), ``processes`` GPUs at ``MULTI_GPU_EFFICIENCY``."""
    update_s = _update_bytes(n_params, copies) / (card.memory_gb_s * 1e9)
    multipliers = card_multipliers(card, cost.train_share)
    out = {}
    for scenario in SCENARIOS:
        seconds = batch * cost.train_s * multipliers[scenario] * cost.band_at(scenario) + update_s
        if scenario == "slow":
            seconds /= SLOW_SHARE
        out[scenario] = seconds / (MULTI_GPU_EFFICIENCY[scenario] if processes > 1 else 1.0)
    return out


def scenario_seconds(t, cost: SampleCost, card: Gpu) -> dict[str, float]:
    """``t``'s seconds on ``card`` by scenario: its training steps (:func:`train_batch_seconds`) and
    forward passes through :func:`.costs.training_seconds`, as a calibrated plan's."""
    copies = t.checkpoint_bytes / (4 * t.params) if t.params and t.checkpoint_bytes else 3
    steps = train_batch_seconds(cost, card, t.batch_size, t.params or cost.params, copies, t.processes) \
        if t.kind in TRAINED else dict.fromkeys(SCENARIOS, 0.0)
    forward = card_multipliers(card, cost.forward_share)
    return {scenario: training_seconds(t, steps[scenario], cost.forward_s * forward[scenario] * cost.band_at(scenario),
                                       0.0, 0.0)
            for scenario in SCENARIOS}


def _count_flops(model, example) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    return counter.get_total_flops() / 1e9


def _image_model_facts(params, arch: dict) -> tuple[float, str, str]:
    """(forward GFLOPs of one image, model class, kind) of the plan's image model ``arch``, built with
    random weights on the meta device."""
    import torch

    from mlc_utils.study.plan.work import _image_model
    spec = next((s for s in params.image.models if s.name == arch["image"] and s.img_size == arch["img_size"]), None)
    if spec is not None:
        model = _image_model(params, spec)
    else:
        import timm
        with torch.device("meta"):
            model = timm.create_model(arch["image"].split(".")[0], pretrained=False)
    backbone = getattr(model, "backbone", model)
    attention = any("attention" in type(m).__name__.lower() for m in model.modules())
    size = arch["img_size"]
    return (_count_flops(model, torch.empty(1, 3, size, size, device="meta")), type(backbone).__name__,
            "transformer" if attention else "convnet")


def _caption_encoder(params) -> tuple[int, int, str]:
    """(parameters besides the embeddings, all parameters, where from) of the caption encoder: the
    model itself where it can be built here, else its configuration in figures/caption_encoders.csv."""
    import torch

    from mlc_utils.study.plan.work import _caption_model
    with torch.device("meta"):
        model = _caption_model(params, "meta")
    if model is not None:
        total = sum(p.numel() for p in model.parameters())
        embeddings = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
        return total - embeddings, total, "its configuration"
    body, total = encoder_size(params.caption.model_name)
    return body, total, "figures/caption_encoders.csv"


def sample_costs(params, trainings) -> dict[int, SampleCost]:
    """The reference card's cost of a sample of each training in ``trainings`` (by ``id``) that has an
    architecture; a caption encoder neither available here nor in the table is left out."""
    out, by_arch, caption = {}, {}, None
    for t in trainings:
        if not t.arch or t.seconds is not None:
            continue
        key = tuple(sorted((k, str(v)) for k, v in t.arch.items()))
        if key not in by_arch:
            if t.kind in IMAGE_KINDS:
                by_arch[key] = image_cost(t.arch["image"], t.arch["img_size"],
                                          lambda arch=t.arch: _image_model_facts(params, arch))
            else:
                if caption is None:
                    try:
                        caption = _caption_encoder(params)
                    except KeyError:
                        caption = False
                if not caption:
                    continue
                length = t.arch.get("max_length")
                by_arch[key] = caption_cost(params.caption.model_name, caption[0],
                                            t.arch.get("train_length", length), t.arch.get("length", length),
                                            caption[1])
        out[id(t)] = by_arch[key]
    return out


def plan_on_gpu(plan, name: str) -> None:
    """Fill in the times of ``plan``'s GPU trainings on ``name`` cards (as many as the profile's
    processes) from the published figures, with their range and the lines naming the sources."""
    card = gpu(name)
    trainings = [t for s in plan.stages for t in s.trainings]
    costs = sample_costs(plan.params, trainings)
    shown = {}
    for stage in plan.stages:
        timed = [t for t in stage.trainings if id(t) in costs]
        for t in timed:
            seconds = scenario_seconds(t, costs[id(t)], card)
            t.seconds, t.seconds_range = seconds["central"], (seconds["fast"], seconds["slow"])
            shown.setdefault(costs[id(t)].source, t.label)
        if timed and all(t.seconds is not None for t in stage.trainings):
            stage.time_note = ""
        elif timed:
            stage.time_note = "not planned (the caption encoder is neither available here nor in figures/caption_encoders.csv)"
    processes = max((t.processes for t in trainings), default=1)
    ref = reference_gpu()
    plan.note = (f"time: planned for {processes} x {card.name} from published figures (no CUDA here), "
                 "not measured; ~central (fast to slow)")
    eff = MULTI_GPU_EFFICIENCY
    plan.sources = [f"GPU figures ({processes} x {card.key}; sources and derivations: "
                    "mlc_utils/study/plan/figures/README.md):"]
    plan.sources += [f"  {label}: {source}" for source, label in shown.items()]
    plan.sources.append(f"  card: {card.describe()} against the table's {ref.describe()}: "
                        f"x{ref.memory_gb_s / card.memory_gb_s:.2f} the time (memory bandwidth)")
    if processes > 1:
        plan.sources.append(f"  {processes} GPUs: each at {eff['central']:.2f} of one alone (Lambda's 2-GPU PyTorch "
                            "training of BERT); per-GPU batch and optimizer update as the profile's")
    fast = ["each row's tensor-core share at the card's tensor throughput"]
    slow = [f"training steps at {SLOW_SHARE:.2f} of the central speed (the lent H100's Swin-T)"]
    if processes > 1:
        fast.append(f"{processes} GPUs at {eff['fast']:.2f}")
        slow.append(f"{processes} GPUs at {eff['slow']:.2f}")
    if any(not c.published for c in costs.values()):
        band = flops_rule_band()
        fast.append(f"estimated models x{band[0]:.2f} (the FLOPs rule on the table itself)")
        slow.append(f"estimated models x{band[1]:.2f}")
    plan.sources.append(f"  range: fast end {'; '.join(fast)}; slow end {'; '.join(slow)}")
