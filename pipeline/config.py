"""Typed, validated params.

`load_params(path)` reads params.yaml into `Params`; every section forbids unknown keys, and every error
names the offending key (e.g. ``params.yaml: noise.rate: Input should be less than or equal to 1``).
Units are given in the field comments.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a YAML boolean (bool itself, Any, or a union/Literal holding one)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, Annotated):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    return False


class Strict(BaseModel):
    """Base for params sections: unknown keys are errors, values are validated on assignment too, numbers
    must be finite, and a boolean is refused where a number is meant (pydantic would read `epochs: true`
    as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        if isinstance(value, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(value).lower()} is a boolean, not a value of this key's type")
        return value


Seed = Annotated[int, Field(ge=0, lt=2**32)]  # seeds: numpy and torch both take [0, 2**32)


class DataParams(Strict):
    """`data:` — where the images and labels come from (read by the ingest stage)."""

    source: Literal["digits", "cifar10", "cifar100", "imagefolder", "manifest"] = "digits"
    root: str | None = None  # directory (cifar*, imagefolder) or manifest file (manifest); relative to cwd
    download: bool = False  # cifar*: let torchvision download into `root` when the batches are missing
    noisy_labels: str | None = None  # CIFAR-10N/100N label file (.pt or .npy) for real noise
    noisy_label_key: str = "worse_label"  # key in a CIFAR-N .pt dict (aggre_label, random_label1, ...)
    manifest_root: str | None = None  # folder manifest paths resolve under (None: the manifest's folder)
    classes: list[str] | None = (
        None  # manifest: the class list (labels must be in it); default: sorted labels
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share held out as test when the source has no split
    split_seed: Seed = 0  # seed of that stratified split (fixed so the split never moves)
    max_per_split: int | None = Field(None, ge=1)  # keep at most this many samples per split (stratified)
    stream: bool = (
        False  # imagefolder/manifest: keep file paths, decode per batch (data too large for memory)
    )

    @model_validator(mode="after")
    def _root_needed(self) -> DataParams:
        if self.source != "digits" and not self.root:
            raise ValueError(f"data.root is required for source '{self.source}'")
        if self.stream and self.source not in ("imagefolder", "manifest"):
            raise ValueError(f"data.stream: only for imagefolder and manifest sources, not '{self.source}'")
        if self.classes is not None:
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if twice:
                raise ValueError(f"data.classes: {twice} listed more than once")
        return self


AsymMap = Literal["digits", "cifar10", "cifar100"] | dict[int, int]


class NoiseParams(Strict):
    """`noise:` — synthetic label noise, or real noisy labels passed through."""

    kind: Literal["none", "real", "symmetric", "asymmetric", "pairflip"] = "symmetric"
    rate: float = Field(0.4, ge=0.0, le=1.0)  # flip probability r per sample
    exclude_true: bool = True  # symmetric: flip to another class (True) or to any of the K classes (False)
    exact: bool = False  # flip exactly round(r * N) samples instead of each with probability r
    asym_map: AsymMap = "digits"  # asymmetric: built-in map name or {from_class: to_class}
    estimate: bool = True  # estimate rate and matrix from out-of-fold CE probabilities (confident joint)
    estimate_folds: int = Field(4, ge=2)  # K of the K-fold cross-validation
    estimate_epochs: int = Field(10, ge=1)  # folds: at most this many CE epochs per fold (early-stopped)
    estimate_from: Literal["auto", "probe", "folds"] = "auto"  # probe: out-of-fold logistic regression on
    # the `embed` stage's features (pretrained, no training); folds: K-fold CE models trained from scratch;
    # auto: probe when the noise stage is given embeddings, else folds
    estimate_patience: int = Field(1, ge=1)  # folds: stop a fold after this many epochs without a better
    # held-out (noisy-label) accuracy; its best epoch's probabilities are kept
    min_model_accuracy: float = Field(0.7, ge=0.0, le=1.0)  # warn when the estimate's models look weaker:
    # implied accuracy on the true labels = held-out noisy-label accuracy / (1 - estimated rate)


class AugmentParams(Strict):
    """Batched augmentation applied to uint8 training batches."""

    hflip: bool = False  # random horizontal flip (off for digits: a flipped 2 is not a 2)
    pad_crop: int = Field(2, ge=0)  # pixels of zero padding before a random crop back to size


class TrainParams(Strict):
    """`train:` — backbone, optimiser and schedule shared by every method (and the retrain stage)."""

    backbone: str = "resnet10t"  # any timm model name
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model kwargs
    pretrained: bool | str = False  # false = random init; true = timm's hub (needs a network); a path = a
    # timm-format state dict (.pth / .safetensors) for `backbone`, classifier reset to K classes
    backbone_lr_scale: float = Field(1.0, ge=0.0)  # backbone lr = lr * this (the classifier keeps lr)
    freeze_backbone_epochs: int = Field(0, ge=0)  # first epochs: the backbone's lr is 0 (head only)
    small_stem: bool = True  # replace the stem by a 3x3 stride-1 conv and drop the max-pool
    image_size: int = Field(16, ge=8)  # px the network sees
    load_size: int | None = Field(None, ge=1)  # px images are decoded to and held in memory (None =
    # image_size); batches are resized to image_size on the fly (e.g. 32 px CIFAR upsampled to 96)
    channels: Literal["auto", 1, 3] = "auto"  # auto = 1 if every image is grayscale else 3
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=2)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # step schedule: epochs at which lr *= gamma
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0)  # linear lr warm-up (epochs), before the schedule
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    workers: int = Field(0, ge=0)  # processes decoding streamed images (data.stream); 0 = in the main process
    compile: bool = False  # torch.compile every network's batch forwards (the first epoch pays the compile)
    sync_bn: bool = True  # torchrun on CUDA: SyncBatchNorm, so BatchNorm sees the whole batch across ranks
    augment: AugmentParams = Field(default_factory=AugmentParams)
    eval_batch_size: int = Field(512, ge=1)
    flag_threshold: float = Field(0.5, ge=0.0, le=1.0)  # is_flagged = noise_score >= this
    similarity_k: Annotated[int, Field(ge=1)] | Literal["all"] = (
        4  # grad_similarity pass: top-k partners per sample
    )
    resume: bool = False  # continue from the last epoch checkpoint when its params match
    progress: bool = True  # tqdm bars

    @property
    def similarity_top_k(self) -> int | None:
        """`similarity_k` as the scoring pass takes it: None = every batch mate."""
        return None if self.similarity_k == "all" else self.similarity_k

    @property
    def stored_size(self) -> int:
        """Side length (px) images are decoded to and kept in memory."""
        return self.load_size or self.image_size

    @model_validator(mode="after")
    def _pretrained_stem(self) -> TrainParams:
        if self.pretrained is not False and self.small_stem:
            raise ValueError(
                "train.small_stem: replaces the pretrained stem convolution by a random one; set small_stem: "
                "false with train.pretrained and upsample small images instead (train.load_size < image_size)"
            )
        if isinstance(self.pretrained, str) and not self.pretrained.strip():
            raise ValueError("train.pretrained: an empty path")
        if self.freeze_backbone_epochs >= self.epochs:
            raise ValueError(
                f"train.freeze_backbone_epochs: {self.freeze_backbone_epochs} leave no epoch of "
                f"train.epochs ({self.epochs}) to fine-tune the backbone"
            )
        return self


class EmbedParams(Strict):
    """`embed:` — one pass of a frozen pretrained backbone over both splits (the `embed` stage)."""

    backbone: str = "efficientnet_lite0"  # timm model name
    pretrained: bool | str = "models/efficientnet_lite0.safetensors"  # true = timm's hub; a path = a
    # timm-format state dict (the `weights` stage converts the packaged EfficientNet-Lite0 there)
    image_size: int = Field(128, ge=16)  # px the backbone sees (images are upsampled in the batch)
    load_size: int | None = Field(None, ge=1)  # px images are decoded to in memory (None = native size of
    # the first image, e.g. 32 for CIFAR, 8 for digits)
    batch_size: int = Field(256, ge=1)
    flip: bool = True  # average the features of the image and its horizontal mirror
    device: str = "auto"  # auto | cpu | cuda | cuda:N


class DatalabParams(Strict):
    """`datalab:` — near-duplicate sets and outliers on the embeddings (cleanlab Datalab's defaults)."""

    k: int = Field(10, ge=1)  # neighbours for both checks
    threshold: float = Field(0.13, gt=0.0, le=1.0)  # near duplicate: distance < this x the median distance
    # between a sample and its nearest neighbour


class CleanParams(Strict):
    """`clean:` — the policy turning score tables into the cleaned label file."""

    methods: list[str] = Field(default_factory=lambda: ["ce"], min_length=1)  # score tables that vote
    relabel_confidence: float = Field(0.8, ge=0.0, le=1.0)  # relabel when pseudo != given and conf >= this
    drop_noise_score: float = Field(0.5, ge=0.0, le=1.0)  # else drop when noise_score >= this
    agreement: Literal["all", "majority"] = "all"  # how many voters must call a label wrong before it is
    # changed; a sample the voters disagree on is kept
    max_share: float | Literal["auto"] | None = "auto"  # cap on the share of rows relabelled or dropped;
    # auto = the noise stage's estimated rate (no cap when there is no estimate); null = no cap


class ReviewParams(Strict):
    """`review:` — the human-review queue (review stage) and the reviewed decisions fed back into clean."""

    methods: list[str] | None = None  # score tables that rank the queue (None = clean.methods)
    budget: int = Field(200, ge=1)  # queue length: the reviews a person is asked for
    disagreement_weight: float = Field(0.5, ge=0.0)  # w in gain = p_wrong x (1 + w x disagreement) / (1 + w)
    image_size: int = Field(128, ge=16, le=1024)  # px, long side of the images on the page / in Label Studio
    decisions: str = "decisions"  # decisions CSV / Label Studio JSON export, or a folder of them (for clean)
    baseline: str = "ce"  # the score table whose noise_score ranking the review simulation compares with


class RunParams(Strict):
    """`run:` — how a run behaves, not what it computes. No stage lists this section in dvc.yaml, so
    flipping a key here re-runs nothing. The same keys in `train:` (older params files) take precedence, and
    there they are hashed with the rest of `train`."""

    resume: bool | None = None  # continue a killed run from checkpoints/<method>.pt (None = train's value)
    progress: bool | None = None  # tqdm bars (None = train's value)


class EvaluateParams(Strict):
    """`evaluate:` — report options."""

    gallery_size: int = Field(24, ge=0)  # most suspicious samples shown in the report


class Params(Strict):
    """The whole params.yaml."""

    seed: Seed = 0
    data: DataParams = Field(default_factory=DataParams)
    noise: NoiseParams = Field(default_factory=NoiseParams)
    train: TrainParams = Field(default_factory=TrainParams)
    methods: list[str] = Field(default_factory=lambda: ["ce"], min_length=1)
    method: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-method options, checked by registry
    embed: EmbedParams = Field(default_factory=EmbedParams)
    detectors: list[str] = Field(default_factory=list)  # detect@<name> stages on the embeddings
    detector: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-detector options
    datalab: DatalabParams = Field(default_factory=DatalabParams)
    run: RunParams = Field(default_factory=RunParams)
    clean: CleanParams = Field(default_factory=CleanParams)
    review: ReviewParams = Field(default_factory=ReviewParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    @property
    def review_voters(self) -> list[str]:
        """The score tables that rank the review queue (`review.methods`, else `clean.methods`)."""
        return self.review.methods or self.clean.methods

    @property
    def scored(self) -> list[str]:
        """Every name with a score table: the trained methods, then the embedding detectors."""
        return self.methods + self.detectors

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        for key in ("resume", "progress"):  # `run:` applies unless `train:` gives the key itself
            if getattr(self.run, key) is not None and key not in self.train.model_fields_set:
                setattr(self.train, key, getattr(self.run, key))
        if self.data.noisy_labels and self.noise.kind != "real":
            raise ValueError(
                f"data.noisy_labels is set but noise.kind is '{self.noise.kind}': the file would be ignored "
                "and synthetic noise injected; set noise.kind: real (or remove data.noisy_labels)"
            )
        bad = [m for m in self.train.milestones if not 1 <= m <= self.train.epochs]
        if bad or self.train.milestones != sorted(set(self.train.milestones)):
            raise ValueError(
                f"train.milestones: {self.train.milestones} must be increasing epochs in [1, train.epochs = "
                f"{self.train.epochs}]"
            )
        return self


def _format(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        prefix = f"{source}: {loc}: " if loc else f"{source}: "
        lines.append(
            f"{prefix}{msg}"
            + (f" (got {err['input']!r})" if err["type"] not in ("extra_forbidden", "value_error") else "")
        )
    return "\n".join(lines)


def parse_sections(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping section by section; raise ConfigError naming every bad key.

    The method and detector names and options are checked by `pipeline.params.parse_params`, which is what
    callers use: this module is data and knows no method."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params.yaml into a mapping (duplicate keys, an empty file and bad YAML refused by name)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if raw is None:
        raise ConfigError(
            f"{path}: the file is empty; start from the shipped params.yaml (the code's defaults are not a "
            "tuned configuration)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validate_section(model: type[BaseModel], raw: dict[str, Any] | None, key: str) -> Any:
    """Validate one sub-section (e.g. a method's options) and name the key on error."""
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(_format(e, f"params.yaml: {key}").replace(": <root>", "")) from None
