"""Training recipes: one small dataclass per method, loaded from `adapters/recipes/<method>.yaml`.

    recipe = load_recipe("sft", max_steps=20)          # packaged YAML + overrides
    recipe = load_recipe("dpo", path="my_dpo.yaml")     # your own YAML (unknown keys are refused)

Fields shared by every method live in `Recipe`; LoRA fields in `LoraRecipe`. `max_steps: 0` means "let `epochs`
decide". The device and precision are not part of a recipe: CUDA + bf16 when present, CPU fp32 otherwise
(`agent.model.pick_device`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
METHODS = ("sft", "dpo", "kto", "full")


@dataclass
class Recipe:
    """What every method has."""

    method: ClassVar[str] = ""
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0  # 0 = run `epochs` over the data
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512  # tokens of prompt + answer; longer rows are truncated (SFT: packed into rows this long)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 0
    logging_steps: int = 1
    gradient_checkpointing: bool = False  # never useful on CPU (costs ~1/3 more compute); for large bases on GPU

    def __post_init__(self):
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum", "logging_steps"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            problems.append(f"max_steps must be >= 0 (0 = use epochs), got {self.max_steps}")
        if self.max_length < 16:
            problems.append(f"max_length must be >= 16, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if problems:
            raise ValueError(f"{self.method} recipe: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass
class LoraRecipe(Recipe):
    """A LoRA adapter on the attention and MLP projections."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self):
        super().__post_init__()
        if self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"{self.method} recipe: need lora_r >= 1, lora_alpha >= 1, 0 <= lora_dropout < 1")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError(f"{self.method} recipe: target_modules is empty")


@dataclass
class SFTRecipe(LoraRecipe):
    """Supervised fine-tuning on `messages` rows; the loss is on the final assistant answer only."""

    method: ClassVar[str] = "sft"
    packing: bool = True  # best-fit packing into `max_length` rows: no padding tokens are computed
    replay: float = 0.0  # add the base's own answers to replay prompts, this many per feedback row (0.25: 1 in 4)
    replay_tokens: int = 96  # length of each replayed answer

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.replay <= 1:
            raise ValueError(f"sft recipe: replay must be in [0, 1], got {self.replay}")


@dataclass
class DPORecipe(LoraRecipe):
    """Direct preference optimisation on prompt / chosen / rejected rows (the reference is the base: the adapter
    switched off)."""

    method: ClassVar[str] = "dpo"
    lr: float = 5e-5
    beta: float = 0.1
    loss_type: str = "sigmoid"
    precompute_ref: bool = True  # reference log-probs once before training instead of every step


@dataclass
class KTORecipe(LoraRecipe):
    """Kahneman-Tversky optimisation on unpaired prompt / completion / label rows."""

    method: ClassVar[str] = "kto"
    lr: float = 5e-5
    beta: float = 0.1
    desirable_weight: float | None = None  # None: balanced from the label counts (adapters.train.kto_weights)
    undesirable_weight: float | None = None
    precompute_ref: bool = True


@dataclass
class FullFTRecipe(Recipe):
    """Every weight trained on the SFT rows (for small bases: the output is a whole model)."""

    method: ClassVar[str] = "full"
    lr: float = 2e-5
    packing: bool = True


CLASSES: dict[str, type[Recipe]] = {"sft": SFTRecipe, "dpo": DPORecipe, "kto": KTORecipe, "full": FullFTRecipe}


def check_method(method: str) -> str:
    if method not in CLASSES:
        raise ValueError(f"unknown training method {method!r}; one of {', '.join(METHODS)}")
    return method


def recipe_from_dict(method: str, values: dict) -> Recipe:
    """A recipe from plain values (unknown keys refused, a `method` key must agree)."""
    cls = CLASSES[check_method(method)]
    values = dict(values or {})
    given = values.pop("method", method)
    if given != method:
        raise ValueError(f"recipe is for method {given!r}, not {method!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {method} recipe key(s) {unknown}; known: {sorted(known)}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for k, v in values.items():  # YAML reads 1e-4 as a string; ints where floats are expected are fine
        if types[k] in ("float", "float | None") and isinstance(v, (str, int)) and not isinstance(v, bool):
            try:
                values[k] = float(v)
            except ValueError as e:
                raise ValueError(f"{method} recipe: {k}={v!r} is not a number") from e
    return cls(**values)


def load_recipe(method: str, path: str | Path | None = None, **overrides) -> Recipe:
    """The recipe for `method`: the YAML at `path` (default `adapters/recipes/<method>.yaml`) plus overrides."""
    import yaml

    check_method(method)
    path = Path(path) if path else RECIPES_DIR / f"{method}.yaml"
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ValueError(f"recipe file {path} not found") from e
    except yaml.YAMLError as e:
        raise ValueError(f"recipe file {path}: not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"recipe file {path}: expected a mapping of settings")
    return recipe_from_dict(method, {**values, **{k: v for k, v in overrides.items() if v is not None}})
