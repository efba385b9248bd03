"""Time left, as ``run`` prints it on every epoch's line: for the model training now, its stage, the run.

What is known comes from the typed events of :mod:`mlc_utils.core.progress` (a member or fold starts
and ends, a model starts, an epoch ends) and from the plan (:mod:`mlc_utils.study.plan`): its seconds
for each stage and for each training of a stage.

* The model: its epochs left at the mean of its epochs so far.
* The stage: what is known to come: the model's time left, the current member's folds still to train
  (each at the time of one fold: the mean of the member's finished folds after its first, which
  alone pays the once-only passes such as the feature cache; before one has finished, this fold's
  training projected from its epochs) and the plan's seconds of the trainings the stage has not
  started, corrected by the run's ratio. Where the plan cannot say which trainings are still to come
  (a stage whose plan lists none, or fewer than it has started), the stage takes the larger of that
  and the plan's own figure less the time the stage has taken.
* The run: the stage's time left plus the plan's seconds of every stage still to come, corrected by
  how the finished stages compared with their plan (:attr:`RunClock.ratio`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlc_utils.core.progress import EpochEnded, FitStarted, MemberEnded, MemberStarted

# The plan is trusted for this many of its seconds before finished stages correct it: eda and the
# split (seconds, nominal in the plan) then move the ratio little, a stage of minutes moves it much.
PRIOR_S = 60.0


@dataclass
class StageClock:
    """The time left of one stage; :meth:`event` takes the stage's events, :meth:`left` answers."""
    planned: float | None = None              # the plan's seconds for the stage
    trainings: list[float] = field(default_factory=list)   # the plan's seconds of each training, in order
    started: float = 0.0
    ratio: float = 1.0                        # measured / planned so far in the run (RunClock.ratio)
    members: list[str] = field(default_factory=list)        # trained here, in order (reused ones excluded)
    member: str = ""
    member_started: float = 0.0
    fold: int = 0                             # 1-based; 0 without folds
    folds: int = 0
    fold_started: float = 0.0
    epochs: int = 0
    done: int = 0                             # epochs of the current model ended (its first, when resumed)
    epoch_seconds: list[float] = field(default_factory=list)
    later_folds: list[float] = field(default_factory=list)   # seconds of the member's folds after its first
    active: bool = False                      # between a member's start and its end

    def event(self, event, now: float) -> None:
        if isinstance(event, MemberStarted):
            if event.name != self.member:
                self.member, self.member_started, self.later_folds = event.name, now, []
                if event.name not in self.members:
                    self.members.append(event.name)
            self.fold, self.folds, self.fold_started, self.active = event.fold, event.folds, now, True
            self.epochs = self.done = 0
            self.epoch_seconds = []
        elif isinstance(event, FitStarted):
            self.epochs, self.done, self.epoch_seconds = event.epochs, event.first, []
        elif isinstance(event, EpochEnded):
            self.epoch_seconds.append(event.seconds)
            self.epochs, self.done = event.epochs, event.epoch
        elif isinstance(event, MemberEnded) and not event.reused and event.name == self.member:
            if self.fold > 1:
                self.later_folds.append(now - self.fold_started)
            self.done, self.active = self.epochs, False   # nothing left of this fold's model

    def model_left(self) -> float | None:
        """The current model's epochs left at its mean epoch; None before its first epoch ends."""
        if not self.epoch_seconds:
            return None
        return sum(self.epoch_seconds) / len(self.epoch_seconds) * max(self.epochs - self.done, 0)

    def fold_seconds(self) -> float | None:
        """The time one more fold of the current member takes (see the module docstring)."""
        if self.later_folds:
            return sum(self.later_folds) / len(self.later_folds)
        if self.epoch_seconds:
            return sum(self.epoch_seconds) / len(self.epoch_seconds) * self.epochs
        return None

    def known_left(self) -> float | None:
        """The current model's time left and the current member's folds still to come; None before
        anything of the member was measured."""
        model, fold = self.model_left(), self.fold_seconds()
        if model is None and fold is None:
            return None
        return (model or 0.0) + max(self.folds - self.fold, 0) * (fold or 0.0)

    def left(self, now: float) -> float | None:
        """The stage's time left (module docstring); None when neither the plan nor an epoch says."""
        known = self.known_left()
        if self.trainings and len(self.members) <= len(self.trainings):
            started = len(self.members)
            if known is None and started:   # the member's first fold, before its first epoch: the plan's
                known = max(self.trainings[started - 1] * self.ratio - (now - self.member_started), 0.0)
            return (known or 0.0) + sum(self.trainings[started:]) * self.ratio
        if self.planned is None:
            return known
        return max(self.planned * self.ratio - (now - self.started), known or 0.0)


@dataclass
class RunClock:
    """The time left of the run: the plan's seconds of each stage it will run (None without a plan),
    corrected by the finished stages."""
    planned: dict[str, float | None] = field(default_factory=dict)
    finished: list[tuple[float, float]] = field(default_factory=list)   # (planned, measured) per stage that ran

    @property
    def known(self) -> bool:
        return bool(self.planned) and all(v is not None for v in self.planned.values())

    @property
    def ratio(self) -> float:
        """Measured / planned seconds of the finished stages, starting from 1 (:data:`PRIOR_S`)."""
        planned = sum(p for p, _ in self.finished)
        measured = sum(m for _, m in self.finished)
        return (measured + PRIOR_S) / (planned + PRIOR_S)

    def stage_ended(self, stage: str, seconds: float) -> None:
        planned = self.planned.get(stage)
        if planned is not None:
            self.finished.append((planned, seconds))

    def after(self, stage: str) -> float | None:
        """The plan's seconds of the stages after ``stage``, corrected by :attr:`ratio`; None where
        the plan has no time for one of them (or there is no plan)."""
        names = list(self.planned)
        if stage not in names:
            return None
        later = [self.planned[s] for s in names[names.index(stage) + 1:]]
        return None if any(v is None for v in later) else sum(later) * self.ratio
