"""Typed run configuration: one YAML preset per experiment, overridable from the CLI.

Every field is validated (unknown keys and wrong types are errors), and the
resolved config is saved in every run directory so that a run can be repeated
and a checkpoint can be rebuilt from it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fkt.errors import UserError

Method = Literal["supervised", "representational", "functional"]
# A grid arm: a method, or supervised training for as many image passes as the functional arm.
# `+fixmatch` adds the pseudo-label term to a method (`fixmatch` alone: supervised + fixmatch).
Arm = Literal["supervised", "representational", "functional", "supervised-matched", "fixmatch",
              "functional+fixmatch", "representational+fixmatch"]
PseudoLabel = Literal["none", "fixmatch"]
SSLObjective = Literal["simclr", "byol", "simsiam", "barlowtwins", "vicreg", "dino", "moco", "nnclr", "supcon"]
Fusion = Literal["fixed", "ramp", "uncertainty", "pcgrad"]
Epochs = Annotated[int | float, Field(gt=0)]  # a whole number stays one in the saved config
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]


def key_problem(key: str, reserved: dict[str, str], refused: str, example: str) -> str:
    """Why a dotted `key` (a grid axis, a tuning field) cannot be set ("" when it can): a field the grid or
    the tuning sets itself (`refused`, formatted with what to use instead), or not a field of Config.
    Called at validation, after the module (and config_field) is loaded."""
    for name, instead in reserved.items():
        if key == name or key.startswith(name + "."):
            return refused.format(instead)
    if config_field(key) is None:
        return f"not a config field (a dotted field such as {example})"
    return ""


def field_error(model: str, kind: str, key: str, problem: str, data: Any) -> ValidationError:
    """A validation error located at `key` inside the field it was found in (one line naming it)."""
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError(kind, problem), loc=(key,), input=data)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: str = Field("fashion-mnist", description="the data layout: fashion-mnist, cifar10, intel-image, "
                         "aptos2019 or imagefolder (`fkt datasets` says which are here)")
    root: Path | None = Field(None, description="the dataset's folder; None: its default (Fashion-MNIST's "
                                               "Debian package), required for the others")
    image_size: PositiveInt | None = Field(
        None, description="side in pixels every image is resized to; None: the dataset's own (32, 150 or 224)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="stratified share of the training data held out for "
                                                             "validation (selects the best epoch)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified share carved out as the test split, "
                                                              "for sets without a labelled test split")
    limit_train: PositiveInt | None = Field(None, description="stratified subset of the training split")
    split_seed: int = Field(0, description="fixes val/test across training seeds, so seeds pair up")
    batch_size: PositiveInt = Field(256, description="training images a step on each device (with few labels: "
                                                     "the SSL pool's batch); capped to the training set if larger")
    eval_batch_size: PositiveInt = Field(512, description="images a step in validation, test and probes "
                                                          "(memory only; results do not change)")
    num_workers: int | None = Field(None, ge=0, description="data loader processes; None: none for sets in memory "
                                                            "or in the image cache, else min(8, CPU cores - 1)")
    scan_images: bool = Field(True, description="decode every image file before training; report all bad ones at once")
    skip_bad_images: bool = Field(False, description="leave unreadable images out (counted in metrics.json)")
    cache: bool = Field(True, description="decode each image file once into a shared, memory-mapped cache "
                                          "(its bad-file list replaces the scan); false: decode files at every access")
    cache_dir: Path | None = Field(None, description="where the image cache lives; None: $FKT_CACHE, else ~/.cache/fkt/images")
    cache_size: PositiveInt | None = Field(
        None, description="side the cache stores images at; None: the image size. Larger: resized on access")
    labels_per_class: PositiveInt | None = Field(
        None, description="keep the labels of this many training images per class; the rest become unlabelled")
    labelled_fraction: float | None = Field(
        None, gt=0, le=1, description="keep the labels of this stratified fraction of the training split")
    unlabelled_root: Path | None = Field(None, description="a folder tree of extra images without labels")
    labelled_batch_size: PositiveInt | None = Field(
        None, description="labelled images a step when some are unlabelled (the cross-entropy's batch); "
                          "None: batch_size; capped to the labelled set if larger")
    pool_batch_ratio: float | None = Field(
        None, ge=1, description="with few labels, pool images a step as a multiple of the labelled batch "
                                "(FixMatch's mu); sets batch_size to ratio x labelled batch. None: batch_size")
    val_labels_per_class: PositiveInt | None = Field(
        None, description="validate on this many labelled images per class (a stratified subset of the held-out "
                          "split, disjoint from training): a validation set no larger than the labelled one")
    labelled_classes: list[str] | None = Field(
        None, description="the task's classes (names); the others can only reach the pool, as class mismatch. "
                          "None: every class")
    pool_mismatch: float = Field(0.0, ge=0, le=1, description="share of the pool drawn from the classes outside "
                                                              "labelled_classes (Oliver et al. 2018), pool size kept")

    @model_validator(mode="after")
    def _one_label_budget(self) -> "DataConfig":
        if self.labels_per_class is not None and self.labelled_fraction is not None:
            raise ValueError("set labels_per_class or labelled_fraction, not both")
        if self.pool_mismatch > 0 and not self.labelled_classes:
            raise ValueError(f"pool_mismatch={self.pool_mismatch} needs data.labelled_classes (the pool's "
                             "other classes are those outside them)")
        if self.pool_batch_ratio is not None and self.few_labels:
            # resolved into the two batches, so that everything downstream reads batch_size as the pool's
            labelled = self.labelled_batch
            self.__dict__.update(labelled_batch_size=labelled, batch_size=max(1, round(self.pool_batch_ratio * labelled)))
        return self

    @property
    def withholds_labels(self) -> bool:
        """Some training labels are withheld (labels_per_class, or a labelled_fraction below 1)."""
        return self.labels_per_class is not None or (self.labelled_fraction or 1) < 1

    @property
    def few_labels(self) -> bool:
        """Some training images are unlabelled: the arms read a labelled set and an image pool."""
        return self.withholds_labels or self.unlabelled_root is not None

    @property
    def labelled_batch(self) -> int:
        """Labelled images a step: labelled_batch_size with few labels (default batch_size), else batch_size."""
        return self.labelled_batch_size or self.batch_size if self.few_labels else self.batch_size


class ModelConfig(_Strict):
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet-tiny"] = Field(
        "resnet18", description="torchvision ResNet, randomly initialised unless pretrained_weights; resnet-tiny: "
                                "ResNet-18's shape at 300k parameters, for tests and quick looks")
    stem: Literal["imagenet", "small"] = Field(
        "imagenet", description="imagenet: 7x7 stride-2 conv and max-pool; small: one 3x3 stride-1 conv "
                                "(for 32 px images: 16x the compute, more resolution kept)")
    pretrained_weights: Path | None = Field(
        None, description="every arm's backbone starts from these weights (a torchvision state dict or an "
                          "fkt checkpoint); None: random init")
    proj_hidden_dim: PositiveInt | None = Field(None, description="None: the backbone's feature size")
    proj_output_dim: PositiveInt = Field(128, description="the SSL projection head's output size")
    channels_last: bool = Field(True, description="NHWC memory format (faster convolutions on CPU and GPU)")


class OptimizerConfig(_Strict):
    name: Literal["sgd", "lars", "adamw"] = Field(description="sgd, lars (lightly's, per-layer trust ratio) "
                                                              "or adamw")
    lr: float = Field(gt=0, description="learning rate at the reference batch (see lr_scaling)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and LARS; AdamW keeps its default betas")
    weight_decay: float = Field(0.0, ge=0, description="decoupled for adamw, L2 for sgd and lars")


class OptimConfig(_Strict):
    # The paper: LARS lr 0.001 for SSL, SGD lr 0.025 for supervised training.
    ssl: OptimizerConfig = Field(OptimizerConfig(name="lars", lr=0.001, weight_decay=1e-6),
                                 description="the SSL pretraining stage's optimizer")
    supervised: OptimizerConfig = Field(OptimizerConfig(name="sgd", lr=0.025, weight_decay=5e-4),
                                        description="supervised training's and fine-tuning's optimizer")
    # Functional: one optimizer over all parameters on the summed loss.
    functional: Literal["supervised", "ssl"] = Field(
        "supervised", description="which of the two optimizer settings the joint step uses"
    )
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="the lr over a stage after warm-up: constant, or a cosine decay to 0")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, in (fractional) epochs")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="scale every lr by global batch / reference_batch (linear) or its square root")
    reference_batch: PositiveInt = Field(256, description="the global batch the configured lr is meant for")


class MethodConfig(_Strict):
    name: Method = Field("functional", description="supervised (cross-entropy), representational (SSL "
                         "pretraining, then fine-tuning) or functional (both losses in each step)")
    lambda_ce: float = Field(1.0, ge=0, description="L = L_ssl + lambda * L_ce")
    ssl: SSLObjective = Field("simclr", description="the self-supervised objective, in pretraining and jointly")
    fusion: Fusion = Field("fixed", description="how the joint step combines its SSL and cross-entropy terms")
    lambda_start: float = Field(0.0, ge=0, description="ramp: lambda at the start, moving to lambda_ce")
    ramp_epochs: float = Field(10.0, gt=0, description="ramp: epochs over which lambda moves")
    grad_cosine: bool = Field(True, description="log the cosine between the two terms' backbone gradients on "
                                                "log steps (functional; about one extra backward on those steps)")
    temperature: float = Field(0.5, gt=0, description="SimCLR's NT-Xent temperature; the other objectives use their own")
    classifier_input: Literal["clean", "weak", "view"] = Field(
        "clean", description="the cross-entropy's input: the image, a weak view (flip, translate), or an SSL view")
    finetune: Literal["full", "linear"] = Field(
        "full", description="representational's second stage: every weight, or a linear probe on the frozen backbone")
    pseudo_label: PseudoLabel = Field(
        "none", description="a pseudo-label term on the unlabelled pool beside the cross-entropy, in any arm that "
                            "trains the classifier: fixmatch (Sohn et al. 2020); needs unlabelled images")
    pl_threshold: float = Field(0.95, gt=0, le=1, description="fixmatch: a pool image's weak-view confidence "
                                                              "needed for its class to become its target")
    pl_weight: float = Field(1.0, ge=0, description="fixmatch: the pseudo-label term's weight beside the cross-entropy")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="evaluate and save an exponential moving average "
                                                                  "of the weights (FixMatch: 0.999); None: the weights")


class TrainerConfig(_Strict):
    epochs: Epochs = Field(100, description="training epochs (representational: fine-tuning's); with few "
                                            "labels an epoch is one pass over the pool; a fraction ends mid-epoch "
                                            "(the grid's compute matching)")
    pretrain_epochs: Epochs = Field(100, description="representational's SSL pretraining epochs; "
                                                     "the other methods ignore it")
    accelerator: str = Field("auto", description="Lightning's accelerator: auto (a GPU where there is one), "
                                                 "cpu, gpu")
    devices: int | str = Field("auto", description="Lightning's devices: auto, a count, or a list such as 0,1")
    num_nodes: PositiveInt = Field(1, description="machines in a multi-node run")
    strategy: str = Field("auto", description="Lightning's strategy: auto, ddp, ... (DDP where several devices)")
    precision: str = Field("32-true", description="Lightning's precision: 32-true, bf16-mixed or 16-mixed")
    deterministic: bool = Field(False, description="deterministic torch kernels only (slower; "
                                                   "bit-identical reruns on a GPU)")
    log_every_n_steps: PositiveInt = Field(10, description="training steps between logged metrics "
                                                           "(and the gradient cosine)")
    checkpoint_every_n_steps: PositiveInt | None = Field(
        None, description="also save last.ckpt every N training steps (mid-epoch), so a kill loses at most N")
    checkpoint_every_minutes: float | None = Field(
        10.0, gt=0, description="also save last.ckpt after this much training time (mid-epoch)")
    sync_batchnorm: bool | None = Field(
        None, description="batch-norm statistics over the global batch; None: on for multi-GPU runs, else off")
    compile: bool = Field(False, description="torch.compile the backbone")
    compile_mode: CompileMode = Field(
        "default", description="torch.compile's mode with compile; reduce-overhead: CUDA graphs, for launch-bound steps")
    progress_bar: bool = Field(True, description="Lightning's progress bar while training")


class EvaluateConfig(_Strict):
    """What a run measures after training, beside its test metrics."""

    probes: list[Literal["knn", "linear"]] = Field(
        ["knn"], description="probes of the frozen backbone (train features -> test accuracy)")
    corruptions: bool = Field(False, description="test accuracy under 7 common corruptions x 5 severities")
    corruption_seed: int = Field(0, description="the corruptions' noise; fixed across training seeds so seeds pair up")
    corruption_images: PositiveInt | None = Field(
        None, description="corrupt a stratified subset of the test split this large (35 passes over it); None: all")


SPACE_KINDS = ("log", "float", "int")  # a range's kinds in tune.space; a list is a choice


class TuneConfig(_Strict):
    """Equal-budget tuning with Optuna (`fkt tune`, `grid.tune`; fkt.tune): every arm gets the same trials,
    each a run of the arm's own budget, selected on validation accuracy alone."""

    trials: PositiveInt = Field(description="trials of the study (completed and pruned ones); every tuned arm "
                                            "gets the same number")
    space: dict[str, Any] = Field(description="dotted config field -> {log: [lo, hi]} (log-uniform float), "
                                              "{float: [lo, hi]}, {int: [lo, hi]} or a list of choices")
    seed: int = Field(0, description="the sampler's seed and every trial's training seed")
    arms: list[Arm] | None = Field(None, description="grid.tune: the arms to tune (default: every arm of "
                                                     "grid.methods); fkt tune takes --arm")
    pruner: Literal["median", "none"] = Field(
        "median", description="median: stop a trial whose validation accuracy after an epoch is below the median "
                              "of earlier trials' at that epoch; none: every trial runs to its end")

    # Fields a trial does not choose, and why: the cell's identity, and its budget (the same in every trial and arm).
    RESERVED: ClassVar[dict[str, str]] = {
        "seed": "tune.seed sets it", "arm": "--arm or tune.arms sets it", "method.name": "--arm or tune.arms sets it",
        "method.pseudo_label": "--arm or tune.arms sets it", "data.dataset": "--dataset or grid.datasets sets it",
        "out": "--out sets it", "grid": "the grid sets it", "tune": "the tuning itself",
        "trainer.epochs": "the budget: the preset's, the same in every trial and arm",
        "trainer.pretrain_epochs": "the budget: the preset's, the same in every trial and arm"}

    @field_validator("space", mode="before")
    @classmethod
    def _flatten_space(cls, value: Any, prefix: str = "") -> Any:
        """`--set tune.space.optim.supervised.lr.log=[...]` nests the key: a mapping under a key that is not a
        config field's means its dotted path."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}
        for key, spec in value.items():
            dotted = f"{prefix}{key}"
            field = config_field(dotted)
            kind = field.annotation if field is not None else None
            leaf = field is not None and not (isinstance(kind, type) and issubclass(kind, BaseModel))
            if isinstance(spec, dict) and spec and not set(spec) & set(SPACE_KINDS) and not leaf:
                flat.update(cls._flatten_space(spec, dotted + "."))
            else:
                flat[dotted] = spec
        return flat

    @field_validator("space")
    @classmethod
    def _known_space(cls, space: dict[str, Any]) -> dict[str, Any]:
        """Each key names a config field a trial may set, with a range or choices: an error is reported at
        `tune.space.<key>`, before anything is written."""
        if not space:
            raise ValueError("needs at least one field to tune, e.g. {optim.supervised.lr: {log: [1e-4, 1e-2]}}")
        for key, spec in space.items():
            problem = (key_problem(key, cls.RESERVED, "not tuned ({})", "optim.supervised.lr or method.temperature")
                       or space_problem(spec))
            if problem:
                raise field_error("TuneConfig", "tune_space", key, problem, space)
        return space


def space_problem(spec: Any) -> str:
    """Why `spec` is not a range or a list of choices ("" when it is one)."""
    if isinstance(spec, list):
        plain = all(value is None or isinstance(value, (bool, int, float, str)) for value in spec)
        return "" if spec and plain else "a list of choices needs at least one value, each a number, string or bool"
    kinds = " or ".join(f"{{{kind}: [lo, hi]}}" for kind in SPACE_KINDS)
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPACE_KINDS):
        return f"expected {kinds}, or a list of choices (got {spec!r})"
    (kind, bounds), = spec.items()
    numbers = (int,) if kind == "int" else (int, float)
    if not (isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)):
        return f"{kind}: expected [lo, hi], two {'whole numbers' if kind == 'int' else 'numbers'} (got {bounds!r})"
    lo, hi = bounds
    if lo >= hi:
        return f"{kind}: the range [{lo}, {hi}] is empty (lo must be below hi)"
    if kind == "log" and lo <= 0:
        return f"log: the range [{lo}, {hi}] must be above 0"
    return ""


class GridConfig(_Strict):
    """The cells `fkt reproduce` runs; `fkt train` ignores this section."""

    methods: list[Arm] = Field(["representational", "functional", "supervised-matched"],
                               description="the arms; supervised-matched: supervised training for as many "
                                           "image passes as the functional arm")
    datasets: list[str] = Field(default_factory=list, description="empty: data.dataset alone")
    seeds: list[int] = Field([0, 1, 2], description="training seeds; every arm runs each, so arms pair up")
    per_method: dict[Arm, dict[str, Any]] = Field(default_factory=dict,
                                                  description="config overrides for one arm")
    per_dataset: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                   description="config overrides for one dataset (its root, say)")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted config field -> values; the grid is datasets x axes x arms x seeds")
    tune: TuneConfig | None = Field(None, description="tune the arms with the same trials before the seeds train "
                                                      "(fkt.tune; see tune.*); None: the preset's settings as they are")

    # Fields the grid sets itself, with the setting to use instead.
    RESERVED_AXES: ClassVar[dict[str, str]] = {
        "seed": "grid.seeds", "arm": "grid.methods", "method.name": "grid.methods",
        "data.dataset": "grid.datasets", "out": "--out", "grid": "a grid of its own"}

    @field_validator("axes", mode="before")
    @classmethod
    def _flatten_axes(cls, value: Any) -> Any:
        """`--set grid.axes.data.labels_per_class=[...]` nests the key; a nested mapping means its dotted path."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}
        for key, values in value.items():
            nested = cls._flatten_axes(values) if isinstance(values, dict) else {}
            flat.update({f"{key}.{k}": v for k, v in nested.items()} if nested else {str(key): values})
        return flat

    @field_validator("axes")
    @classmethod
    def _known_axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Each key must name a config field the grid does not set itself, with one value or more:
        an error is reported at `grid.axes.<key>`, before any cell is built."""
        for key, values in axes.items():
            problem = key_problem(key, cls.RESERVED_AXES, "set by the grid itself (use {})",
                                  "data.labels_per_class or trainer.epochs") or ("" if values else "needs at least one value")
            if problem:
                raise field_error("GridConfig", "grid_axis", key, problem, axes)
        return axes

    @model_validator(mode="after")
    def _tuned_arms_in_the_grid(self) -> "GridConfig":
        """What grid.tune tunes must be in the grid, and what an axis varies cannot be tuned as well."""
        if self.tune is None:
            return self
        loc, problem = ("tune", "arms"), ""
        extra = [arm for arm in self.tune.arms or [] if arm not in self.methods]
        if extra:
            problem = f"{extra[0]} is not an arm of grid.methods ({', '.join(self.methods)})"
        for key in self.tune.space:
            if key in self.axes:
                loc, problem = ("tune", "space", key), "also a grid axis: tune it or vary it, not both"
        if problem:
            raise ValidationError.from_exception_data("GridConfig", [InitErrorDetails(
                type=PydanticCustomError("grid_tune", problem), loc=loc, input={})])
        return self


class Config(_Strict):
    method: MethodConfig = Field(MethodConfig(), description="the method and its SSL objective")
    data: DataConfig = Field(DataConfig(), description="the dataset, its splits, label budget and batches")
    model: ModelConfig = Field(ModelConfig(), description="the backbone and the projection head")
    optim: OptimConfig = Field(OptimConfig(), description="optimizers and the lr schedule")
    trainer: TrainerConfig = Field(TrainerConfig(), description="epochs, hardware and checkpointing")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="what is measured after training")
    grid: GridConfig = Field(GridConfig(), description="the cells of `fkt reproduce`")
    tune: TuneConfig | None = Field(None, description="`fkt tune`'s study: trials, search space, seed, pruner "
                                                      "(see tune.*; grid.tune when it is not set)")
    seed: int = Field(0, description="training seed (initialisation, batch order, views); the split has "
                                     "its own, data.split_seed")
    arm: str | None = Field(None, description="the grid arm a run belongs to (default: the method)")
    out: Path | None = Field(None, description="the run directory (fkt train --out); a rerun on it resumes "
                                               "from its last checkpoint")

    @model_validator(mode="after")
    def _pseudo_labels_need_a_pool(self) -> "Config":
        if self.method.pseudo_label != "none" and not self.data.few_labels:
            raise ValueError(f"method.pseudo_label={self.method.pseudo_label} needs unlabelled images: set "
                             "data.labels_per_class, data.labelled_fraction below 1 or data.unlabelled_root")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def preset(cls, name: str, overrides: dict[str, Any] | None = None) -> "Config":
        """A packaged preset by name (`quick`, `own-data`) or a YAML file, with `{"trainer.epochs": 2}`-style
        overrides: what `fkt train --preset NAME --set ...` starts from, for a notebook to change and train."""
        from fkt.presets import find_preset

        return resolve(find_preset(name), overrides or {}, [])

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Config":
        """A YAML file of one's own, or a run's saved config.yaml (to repeat or extend that run)."""
        return resolve(Path(path), overrides or {}, [])


def config_field(dotted: str) -> Any:
    """The pydantic field a dotted name (`data.batch_size`) names, or None where it names none."""
    model: Any = Config
    field = None
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = field.annotation
    return field


def field_description(dotted: str) -> str:
    """A config field's `description=` by its dotted name (`data.batch_size`): the one text that
    `fkt train --help` and the configuration reference both show."""
    field = config_field(dotted)
    if field is None:
        raise KeyError(f"{dotted}: not a config field")
    return field.description or ""


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    value = first.get("input")
    shown = "" if first["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {msg}" if field == "<root>" else f"{source}: {field}: {msg}{shown}"


def build_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source)) from None


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Apply one `section.field=value` override to a nested dict."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"--set {item}: expected key=value, e.g. --set optim.supervised.lr=0.1")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise UserError(f"--set {item}: no key before '='")
    try:
        return key.strip(), yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"--set {item}: the value is not valid YAML ({problem}); quote it to pass a string") from None


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section."""
    out = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both_dicts else value
    return out


def resolve(config_file: Path | None, overrides: dict[str, Any], sets: list[str]) -> Config:
    """Defaults, then the file, then explicit CLI flags, then `--set key=value` items (last wins)."""
    data = deep_merge(Config().to_dict(), load_yaml(config_file) if config_file else {})
    for key, value in overrides.items():
        if value is not None:
            set_dotted(data, key, value)
    for item in sets:
        set_dotted(data, *parse_override(item))
    return build_config(data, str(config_file) if config_file else "config")


def save_config(config: Config, path: Path) -> None:
    from fkt.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
