"""Training recipes: how each network is trained, as plain values a reader sees at a glance.

A recipe is either one :class:`Recipe` for every network (``seed``, ``tuned``, ...) or
one per network (``fast``: built for time to accuracy, so each network gets its own
epochs, batch size and peak learning rate). :func:`recipe_for` is the only way in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fmnist.io import FmnistError
from fmnist.system import has_native_bf16

# Learning-rate schedules: `step` multiplies the rate by `lr_decay` every epoch (the seed's);
# `one-cycle` warms up linearly from zero over `warmup_fraction` of all steps to the peak,
# then follows a cosine to zero at the last step.
SCHEDULES = ("step", "one-cycle")
# Training precisions: `f32`, or `bf16-native`: Keras' mixed bfloat16 (bf16 compute, f32
# weights) where the CPU runs bf16 natively, f32 with the same recipe elsewhere.
PRECISIONS = ("f32", "bf16-native")


@dataclass(frozen=True)
class Recipe:
    """How a network is trained; ``seed`` is the report's own recipe."""

    name: str
    learning_rate: float = 1e-3  # the peak rate of a one-cycle schedule
    lr_decay: float = 0.9  # step schedule: learning rate = learning_rate * lr_decay ** epoch
    schedule: str = "step"
    warmup_fraction: float = 0.0  # one-cycle: the share of all steps spent warming up
    label_smoothing: float = 0.0
    restore_best: bool = False  # keep the weights of the best validation epoch
    augment: bool = False
    shift: float = 0.05  # augmentation's random translation, a fraction of the image; 0: flips only
    weight_decay: float = 0.0  # decoupled (AdamW); 0 keeps plain Adam
    # BatchNormalization's moving-average momentum; None keeps the layers' own (Keras: 0.99).
    batch_norm_momentum: float | None = None
    # Training-time Dropout rates are the architecture's times this (0: no dropout while
    # training). Inference is unchanged, and the saved model keeps the architecture's rates.
    dropout_scale: float = 1.0
    epochs: int = 40  # what --epochs defaults to
    batch_size: int = 64  # what --batch-size defaults to
    precision: str = "f32"
    validate_every: int = 1  # validate every N epochs; the last epoch always
    # Knowledge distillation: the network (in the same run) whose predictions teach, and
    # their weight alpha in the targets, (1 - alpha) * one-hot label + alpha * teacher.
    teacher: str | None = None
    distill_weight: float = 0.0
    # Distillation on more than the training images: each image and teacher_views - 1
    # copies of it shifted by up to 2 pixels, each with the teacher's probabilities on that
    # very copy; an epoch passes over all of them (1: the images alone).
    teacher_views: int = 1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise FmnistError(f"recipe {self.name}: unknown schedule {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise FmnistError(f"recipe {self.name}: unknown precision {self.precision!r}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise FmnistError(f"recipe {self.name}: distill_weight must be within [0, 1]")
        if not 0.0 <= self.dropout_scale <= 1.0:
            raise FmnistError(f"recipe {self.name}: dropout_scale must be within [0, 1]")
        if self.distill_weight and self.teacher is None:
            raise FmnistError(f"recipe {self.name}: distill_weight without a teacher")
        if self.teacher_views < 1:
            raise FmnistError(f"recipe {self.name}: teacher_views must be at least 1")
        if self.teacher_views > 1 and self.teacher is None:
            raise FmnistError(f"recipe {self.name}: teacher_views without a teacher")

    @property
    def one_hot(self) -> bool:
        """Whether targets are class-probability rows (categorical loss), not class indices."""
        return bool(self.label_smoothing) or self.teacher is not None


def _fast(name: str = "fast", **values) -> Recipe:
    # One-cycle over the whole run, label smoothing, horizontal flips (no translations:
    # they made these networks underfit), batch 128 through a tf.data pipeline. Batch
    # norm's moving statistics at momentum 0.9: at the layers' own 0.99 they keep 0.99**n
    # of their initial variance (1.0) after n steps, which outweighs the true variance
    # (0.0025 in backup2's first layer) for the first ~500 steps and made a 375-step run
    # score 33 % (83 % at 0.9). With the rate near zero at the end, 0.9 loses nothing.
    defaults = dict(
        batch_norm_momentum=0.9,
        schedule="one-cycle",
        warmup_fraction=0.2,
        label_smoothing=0.1,
        augment=True,
        shift=0.0,
        batch_size=128,
        precision="bf16-native",
    )
    return Recipe(name, **{**defaults, **values})


RECIPES: dict[str, Recipe | dict[str, Recipe]] = {
    "seed": Recipe("seed"),
    # Label smoothing and best-epoch restore: same architecture, same epochs, no augmentation
    # (strong augmentation made these small networks underfit in 40 epochs).
    "tuned": Recipe("tuned", lr_decay=0.92, label_smoothing=0.1, restore_best=True),
    # tuned plus decoupled weight decay, for networks that overfit their dense head.
    "tuned-wd": Recipe(
        "tuned-wd", lr_decay=0.92, label_smoothing=0.1, restore_best=True, weight_decay=0.05
    ),
    # tuned plus horizontal flips: twice the images without moving the small networks'
    # few spatial positions (translations made them underfit).
    "tuned-flip": Recipe(
        "tuned-flip", lr_decay=0.92, label_smoothing=0.1, restore_best=True, augment=True, shift=0.0
    ),
    # For runs of up to a few hundred steps (the `quick` profile). At momentum 0.99 the moving
    # BatchNorm statistics still describe the first batches' weights when such a run ends,
    # and main predicts one class for every image; at 0.7 they follow the last few
    # batches. A faster start and decay suit 2-3 epochs.
    "quick": Recipe("quick", learning_rate=2e-3, lr_decay=0.8, batch_norm_momentum=0.7),
    # Time to accuracy: each network past the seed report's test accuracy within a wall-clock
    # budget on 2 cores (docs/recipes-and-accuracy.md has the measurements behind each value).
    "fast": {
        "main": _fast(epochs=12, learning_rate=2e-3),
        "backup1": _fast(epochs=12, learning_rate=3e-3),
        "backup2": _fast(epochs=12, learning_rate=3e-3),
    },
    # Peak accuracy: main's one-cycle for longer; the small networks distilled from the
    # run's main, its flip-averaged probabilities weighted 0.7 in their targets; backup2
    # weighting them 0.9 without label smoothing, without dropout while training (with it,
    # it underfit the teacher's targets), and taught on shifted views of its images too
    # (the teacher's probabilities on the views showed it more of the teacher's function)
    # (docs/recipes-and-accuracy.md, "Peak accuracy: distillation", has the tries).
    "peak": {
        "main": _fast("peak", epochs=30, learning_rate=2e-3),
        "backup1": _fast("peak", epochs=30, learning_rate=3e-3, teacher="main", distill_weight=0.7),
        "backup2": _fast(
            "peak",
            epochs=8,  # over the images and 3 shifted views of each: 30 epochs' examples
            learning_rate=3e-3,
            teacher="main",
            distill_weight=0.9,
            label_smoothing=0.0,
            dropout_scale=0.0,
            teacher_views=4,
        ),
    },
}


def recipe_names() -> list[str]:
    """The recipe names ``train --recipe`` accepts."""
    return list(RECIPES)


def recipe_for(name: str, model: str) -> Recipe:
    """The recipe ``name`` as it trains ``model``, or an error listing the valid names."""
    if name not in RECIPES:
        raise FmnistError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if isinstance(recipe, Recipe):
        return recipe
    if model not in recipe:
        raise FmnistError(f"recipe {name!r} has no settings for model {model!r}")
    return recipe[model]


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """The step schedule's learning rate for a 0-based epoch."""
    return recipe.learning_rate * recipe.lr_decay**epoch


def one_cycle_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """The one-cycle learning rate after ``step`` of ``total_steps`` optimizer steps.

    Mirrors Keras' ``CosineDecay`` with ``warmup_target`` (what training runs), for the
    history and the tests: linear from zero to the peak, then a cosine to zero.
    """
    warmup = warmup_steps(recipe, total_steps)
    if step < warmup:
        return recipe.learning_rate * step / warmup
    decay = max(total_steps - warmup, 1)
    progress = min(step - warmup, decay) / decay
    return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(recipe: Recipe, total_steps: int) -> int:
    """How many of ``total_steps`` a one-cycle schedule spends warming up."""
    return int(round(recipe.warmup_fraction * total_steps))


def training_precision(recipe: Recipe, native_bf16: bool | None = None) -> str:
    """The precision a recipe trains in on this CPU: ``mixed_bfloat16`` or ``float32``.

    ``native_bf16``: whether the CPU runs bf16 natively (default: this one, under oneDNN's
    ISA cap). Emulated bf16 is slower than f32, so ``bf16-native`` falls back to f32.
    """
    if recipe.precision == "f32":
        return "float32"
    native = has_native_bf16() if native_bf16 is None else native_bf16
    return "mixed_bfloat16" if native else "float32"
