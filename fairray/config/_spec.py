"""The typed sweep spec: what a YAML file in ``search_spaces/`` may say.

Every section is a frozen dataclass; :func:`fairray.config.load_spec` validates a file against
them at load time. The ``method`` and ``model`` sections name a registered plugin and carry that
plugin's own typed parameters next to ``name``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fairray.frontier.pareto import Direction


@dataclass(frozen=True)
class CorpusSource:
    """One corpus in its native layout: a registered adapter (`fairray data list`) and its folder."""

    adapter: str
    root: str
    #: Adapter options, e.g. {metadata_only: true} for cremad.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NamedParams:
    """A registered protocol or extractor and its parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


#: Fields each input kind reads; giving one of another kind is an error, never ignored.
_INPUT_FIELDS = {"waveform": ("max_seconds", "eval", "dtype"), "tokens": ("tokenizer", "max_length", "column")}


@dataclass(frozen=True)
class InputConfig:
    """One named input besides (or, with ``extractor: null``, instead of) the extractor's ``features``
    vector: ``dataset.inputs.<name>``, e.g. ``{audio: {kind: waveform, max_seconds: 4.0}}``.

    ``kind: waveform``: each clip's 16 kHz mono samples, decoded once into the cache (``waveform/`` beside
    the features). Training takes a random crop of ``max_seconds`` (null: whole clips); evaluation takes
    whole clips (``eval: whole``, the default) or the first ``max_seconds`` (``eval: crop``). ``dtype:
    float16`` halves the cache and the memory of the samples (batches are float32 either way).

    ``kind: tokens``: the transcript column (``column``, default ``text``) tokenised with the tokenizer in
    the local folder ``tokenizer`` (``AutoTokenizer.from_pretrained(folder)``, never downloaded), truncated
    to ``max_length`` tokens (default 128). Only corpora with transcripts (MELD, MELD-ST, IEMOCAP) have one.
    """

    kind: Literal["waveform", "tokens"]
    max_seconds: float | None = field(default=None, metadata={"gt": 0})
    eval: Literal["whole", "crop"] | None = None
    dtype: Literal["float32", "float16"] | None = None
    tokenizer: str | None = None
    max_length: int | None = field(default=None, metadata={"ge": 2})
    column: str | None = None

    def __post_init__(self) -> None:
        foreign = [f for kind, names in _INPUT_FIELDS.items() if kind != self.kind for f in names
                   if getattr(self, f) is not None]
        if foreign:
            raise ValueError(f"{foreign[0]} does not apply to kind {self.kind}, which takes "
                             f"{', '.join(_INPUT_FIELDS[self.kind])}")
        if self.kind == "tokens" and self.tokenizer is None:
            raise ValueError("kind tokens needs `tokenizer`: a local folder holding a Hugging Face tokenizer "
                             "(tokenizer.json or vocab files; nothing is downloaded)")
        if self.eval == "crop" and self.max_seconds is None:
            raise ValueError("eval: crop needs max_seconds (the length evaluation clips are cut to)")

    @property
    def eval_mode(self) -> str:
        return self.eval or "whole"

    @property
    def sample_dtype(self) -> str:
        return self.dtype or "float32"

    @property
    def text_column(self) -> str:
        return self.column or "text"

    @property
    def token_limit(self) -> int:
        return self.max_length or 128


@dataclass(frozen=True)
class BinaryLabel:
    """A 0/1 label from a table column: 1 where the column's value is one of ``positive``."""

    column: str
    positive: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.positive:
            raise ValueError("positive: give at least one value of the column that counts as label 1")


@dataclass(frozen=True)
class OODConfig:
    """GEAR's out-of-distribution test subsets (METHODS 4.3): ``dataset.ood``.

    For each modality (label -> a vector input, or a sequence input, time-averaged) the training split is
    clustered with K-means (``k``) and a subset of ``fraction`` of the test split is chosen by simulated
    annealing to maximise the per-cluster shift of the binary ``label`` against its training rate, at the
    test split's overall label rate. Each subset is an extra test split ``test_ood_<modality>`` (and
    ``test_ood_joint`` over all modalities together, GEAR's ``tav``, when there are two or more), evaluated
    and logged like ``test``; never a search objective.
    """

    modalities: Mapping[str, str]
    label: BinaryLabel
    k: int = field(default=10, metadata={"ge": 1})
    fraction: float = field(default=0.5, metadata={"gt": 0, "lt": 1})
    moves: int = field(default=20_000, metadata={"ge": 0})
    seed: int = field(default=0, metadata={"ge": 0})
    #: Also the joint set over every modality (needs two or more).
    joint: bool = True

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("modalities: give at least one {label: <input name>} (e.g. {text: features})")


@dataclass(frozen=True)
class DatasetConfig:
    """Which data a trial trains and is scored on.

    ``name: ser3`` is the built-in dataset (features shipped in the package). ``name: corpora`` reads
    ``corpora`` in their native layouts, splits them with ``protocol`` (default: speaker-independent per
    stratum x attribute) and extracts features with ``extractor`` once per sweep through the feature
    cache under ``cache`` (default: ``<storage.path>/features``).
    """

    name: str = "ser3"
    corpora: tuple[CorpusSource, ...] = ()
    protocol: NamedParams | None = None
    #: A protocol applied after the split that changes the training/dev composition only, e.g.
    #: ``{name: imbalance_1to20, params: {label: emotion}}`` (IDI's simulated 1:20 gender imbalance).
    resample: NamedParams | None = None
    #: Feature extractor run on the audio; ``null`` uses the features the corpus ships (MOSI/MOSEI), or none
    #: when ``inputs`` are given and the corpus ships no features (the dataset then has no ``features`` input).
    extractor: NamedParams | None = field(default_factory=lambda: NamedParams("opensmile_egemaps"))
    #: Named inputs built from the corpora besides the ``features`` vector: waveforms, transcript tokens
    #: (see :class:`InputConfig`), e.g. ``{audio: {kind: waveform, max_seconds: 4.0}}``.
    inputs: Mapping[str, InputConfig] = field(default_factory=dict)
    cache: str | None = None
    #: Parallel feature extraction on a cache miss: Ray tasks when Ray runs (a sweep), else processes; waveform
    #: inputs decode with this many threads.
    extract_workers: int = field(default=1, metadata={"ge": 1})
    #: Where training groups come from (`attribute` = the true attribute); metrics always use the truth.
    groups: NamedParams = field(default_factory=lambda: NamedParams("attribute"))
    #: Emotion classes kept (clips of other emotions are dropped).
    emotions: tuple[str, ...] = ("anger", "fear", "happiness", "neutral", "sadness")
    languages: tuple[str, ...] = ("en", "de", "pl")
    #: Protected attribute for every fairness metric, and the stratum gaps are computed inside.
    attribute: str = "gender"
    stratum: str = "language"
    #: Speaker-independent split: fraction of each language x gender's speakers held out (>= 1 each).
    dev_fraction: float = field(default=0.15, metadata={"gt": 0, "lt": 0.5})
    test_fraction: float = field(default=0.25, metadata={"gt": 0, "lt": 0.5})
    split_seed: int = 0
    #: Training and evaluation targets. ``single``: one class per clip (the ``emotion`` column; clips of
    #: other emotions are dropped). ``multi`` (the IDI / EMO-SUPERB setting, METHODS §1.2, §2.1): the
    #: ``soft_<class>`` columns of every class in ``emotions`` (rater-vote shares, renormalised over those
    #: classes when the corpus has more) are the training targets of a soft-target base loss, and every
    #: evaluation uses multi-hot targets ``1[soft_c > 1/|C|]`` and decisions ``1[p_c > 1/|C|]``. Clips
    #: need no majority class (test keeps every clip); a protocol such as ``imbalance_1to20`` may still
    #: drop non-majority clips from train/dev. Only corpora with rater votes carry ``soft_<class>``
    #: columns: ``cremad`` (or a manifest that has them). ``regression`` (MOSI / MOSEI sentiment, METHODS
    #: §3.11): the float column ``target`` is the training and evaluation target, there is no class list
    #: (``emotions`` is not read), models have one output, and reports carry ``mae``, ``corr``, ``acc2`` and
    #: ``f1_2`` (MulT's zero exclusion) with their per-group ranges. Only corpora with a continuous target
    #: (``mosi``, ``mosei``: ``reg_target`` in [-3, 3]) and methods that need no class counts (``erm`` and
    #: ``gear`` with ``loss: l1``) take it.
    targets: Literal["single", "multi", "regression"] = "single"
    #: The continuous target column of ``targets: regression`` (null: ``reg_target``, the MOSI / MOSEI one).
    target: str | None = None
    #: GEAR's OOD test subsets of the test split, evaluated and logged as extra test splits (see :class:`OODConfig`).
    ood: OODConfig | None = None

    def __post_init__(self) -> None:
        if len(set(self.emotions)) < 2 or len(set(self.emotions)) != len(self.emotions):
            raise ValueError(f"emotions needs at least two distinct classes, got {list(self.emotions)}")
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages needs at least one value and no repeats, got {list(self.languages)}")
        if (self.name == "corpora") != bool(self.corpora):
            raise ValueError("`corpora` (a list of {adapter, root}) is required with name: corpora and only there, "
                             f"got name={self.name!r} with {len(self.corpora)} corpora")
        if self.inputs and self.name != "corpora":
            raise ValueError(f"inputs {sorted(self.inputs)} are built from audio and transcripts, which dataset "
                             f"{self.name!r} lacks; use name: corpora with the corpora's folders")
        if "features" in self.inputs:
            raise ValueError("inputs: the name 'features' is the extractor's vector input; name this input "
                             "otherwise (e.g. audio, transcript)")
        if self.targets == "multi" and self.name == "ser3":
            raise ValueError("targets: multi needs per-clip soft labels from rater votes (soft_<class> columns), "
                             "which the built-in ser3 lacks; use name: corpora with a corpus that carries votes "
                             "(adapter: cremad)")
        if self.targets == "regression" and self.name != "corpora":
            raise ValueError(f"targets: regression needs a continuous target column, which the built-in {self.name} "
                             "lacks (it has emotion classes); use name: corpora with a corpus that has one "
                             "(adapter: mosi or mosei, column reg_target)")
        if self.target is not None and self.targets != "regression":
            raise ValueError(f"target ({self.target!r}) is the column of targets: regression; targets is "
                             f"{self.targets!r}, which reads {'emotion' if self.targets == 'single' else 'soft_<class>'}")

    @property
    def target_column(self) -> str:
        """The continuous target column of ``targets: regression``."""
        return self.target or "reg_target"


@dataclass(frozen=True)
class PluginConfig:
    """A registered plugin (method or model) and its typed parameters."""

    name: str
    params: Any = None  # the plugin's own frozen Params dataclass, filled by the loader

    def to_plain(self) -> dict[str, Any]:
        """The YAML layout: ``{name: ..., <param>: ...}``."""
        from fairray._typed import to_plain

        return {"name": self.name, **(to_plain(self.params) if self.params is not None else {})}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=30, metadata={"ge": 1})
    batch_size: int = field(default=64, metadata={"ge": 2})
    lr: float = field(default=1e-3, metadata={"gt": 0})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0})
    #: Batch composition; ``auto`` takes the method's preferred sampler.
    sampler: Literal["auto", "uniform", "stratified_cells", "group_balanced", "class_balanced"] = "auto"
    #: Which epoch's model a trial keeps: lowest dev base loss (IDI, ES) or the last one.
    selection: Literal["best_dev_loss", "last"] = "best_dev_loss"
    seed: int = 0
    #: Minimum support for a per-group rate to be defined (METHODS 2.3, 2.6). A spec that searches on a gap
    #: and sets none gets 5 (config._load.GAP_OBJECTIVE_S_MIN, METHODS 2.6.5); otherwise 1.
    s_min: int = field(default=1, metadata={"ge": 1})
    #: Abort a trial whose training loss is not finite (it ends FAILED with the reason); false skips the
    #: step instead (on every worker), counts it and logs the count as train/skipped_steps.
    fail_on_nan: bool = True
    #: Autocast precision of forward and loss: fp32 (none), bf16, or fp16 (with a gradient scaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Micro-batches of batch_size per optimiser step (gradient accumulation; effective batch =
    #: batch_size x accumulate, split across the workers). Batch statistics (group means, gaps) cover the step.
    accumulate: int = field(default=1, metadata={"ge": 1})
    #: Clip the gradient norm to this value before each step (null = no clipping; the norm is logged).
    grad_clip: float | None = field(default=None, metadata={"gt": 0})
    #: Rows per forward pass when evaluating dev/test (peak memory does not grow with the split).
    eval_batch_size: int = field(default=256, metadata={"ge": 1})
    #: Seconds of training between two checkpoints (Lightning's ``train_time_interval``): after an epoch, a
    #: checkpoint is written once this long has passed since the last one, and always after the last epoch or
    #: a failure; 0 = after every epoch. A trial resumed after a crash redoes at most this much training.
    checkpoint_interval_s: float = field(default=30.0, metadata={"ge": 0})


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of the search space (translated to an Optuna distribution)."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    #: Sample this dimension only when earlier categorical dimensions took one of the listed values,
    #: e.g. ``{method.name: [gdro, gadro]}``; otherwise the spec's own value applies (a conditional space).
    when: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction


@dataclass(frozen=True)
class Constraint:
    """A feasibility condition on one metric every trial reports: ``METRIC >= BOUND`` or ``METRIC <= BOUND``.

    Written in YAML as that text (``search.constraints: ["dev/weighted_f1 >= 0.40"]``) and parsed once, at load
    time (:meth:`parse`). Optuna reads its :meth:`violation` (> 0: infeasible, the size of the miss).
    """

    metric: str
    op: Literal["<=", ">="]
    bound: float

    OPERATORS: ClassVar[tuple[str, ...]] = ("<=", ">=")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """``"dev/weighted_f1 >= 0.40"`` -> Constraint; ValueError naming the expected form otherwise."""
        match = re.fullmatch(r"\s*(\S+?)\s*(<=|>=)\s*(\S+)\s*", text) if isinstance(text, str) else None
        bound = None
        if match:
            try:
                bound = float(match.group(3))
            except ValueError:
                bound = None
        if bound is None or not math.isfinite(bound):
            raise ValueError(f"expected 'METRIC >= NUMBER' or 'METRIC <= NUMBER' (e.g. 'dev/weighted_f1 >= 0.40', "
                             f"'dev/f1_gap/gender <= 0.1'), got {text!r}")
        return cls(match.group(1), match.group(2), bound)

    def violation(self, value: float) -> float:
        """How far ``value`` misses the bound (<= 0: satisfied); a missing or NaN value misses by ``inf``."""
        if value is None or not math.isfinite(float(value)):
            return math.inf
        return float(value) - self.bound if self.op == "<=" else self.bound - float(value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Multi-objective successive halving (MOASHA) over the per-epoch dev report.

    Rungs lie at ``grace * reduction**k`` epochs below ``train.epochs``; at each, a trial is ranked among the
    trials that reached it (non-dominated rank, then hypervolume contribution) and stopped unless it is in the
    top ``1/reduction``. A stopped trial is PRUNED in Optuna and tagged ``fairray.pruned`` in MLflow.
    """

    type: Literal["moasha"] = "moasha"
    #: Epochs every trial trains before its first comparison.
    grace: int = field(default=5, metadata={"ge": 1})
    #: 1/reduction of the trials reaching a rung go on; the next rung lies reduction times further.
    reduction: float = field(default=3.0, metadata={"gt": 1})
    #: What the rungs rank on: metrics the loop reports every epoch; default: ``search.objectives``.
    objectives: tuple[Objective, ...] = ()


@dataclass(frozen=True)
class SearchConfig:
    #: Dotted config paths (``method.lambda_max``, ``train.lr`` ...) to their distribution.
    space: Mapping[str, ParamSpec] = field(default_factory=dict)
    objectives: tuple[Objective, ...] = ()
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    #: Stop dominated trials early (``{type: moasha, grace: 5, reduction: 3}``); null trains every trial fully.
    early_stopping: EarlyStoppingConfig | None = None
    #: Feasibility conditions on dev metrics (``"dev/weighted_f1 >= 0.40"``), given to the sampler; the default
    #: front holds feasible trials only.
    constraints: tuple[Constraint, ...] = ()

    def max_epochs(self, epochs: int) -> int:
        """The most epochs a trial can train: the top of a searched ``train.epochs``, else ``epochs``."""
        dim = self.space.get("train.epochs")
        if dim is None:
            return epochs
        return int(dim.high) if dim.high is not None else max(int(c) for c in dim.choices or (epochs,))

    @property
    def stopping_objectives(self) -> tuple[Objective, ...]:
        """What early stopping ranks on: its own ``objectives`` or else the search objectives."""
        if self.early_stopping is None:
            return ()
        return self.early_stopping.objectives or self.objectives


@dataclass(frozen=True)
class AblationConfig:
    """A declared grid, run with ``fairray sweep SPEC --ablation NAME`` (no sampler involved).

    ``cells`` is a list of grids (dotted path -> list of values); each grid expands to the product of its
    lists and the ablation runs the union of all of them, each point once per seed in ``seeds``
    (``train.seed``). Everything a cell does not set keeps the spec's value.
    """

    cells: tuple[Mapping[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class BudgetConfig:
    num_samples: int = field(default=16, metadata={"ge": 1})
    max_concurrent: int = field(default=2, metadata={"ge": 1})
    seed: int = 0
    #: Retries of a failed trial, each resumed from its last checkpoint.
    max_failures: int = field(default=2, metadata={"ge": 0})
    #: Train each configuration under this many seeds (``train.seed`` + 0, 1, ...): one MLflow run each; Optuna
    #: and the frontier take their mean (the frontier shows the spread). ``num_samples`` counts configurations.
    repeats: int = field(default=1, metadata={"ge": 1})


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial compute. ``backend: train`` runs the loop under a Ray Train ``TorchTrainer``;
    ``function`` runs the same loop directly inside the Tune trial (single worker, no Train
    start-up cost); ``auto`` picks ``train`` for several workers or GPUs, else ``function``."""

    backend: Literal["auto", "train", "function"] = "auto"
    num_workers: int = field(default=1, metadata={"ge": 1})
    cpus_per_worker: float = field(default=1.0, metadata={"ge": 0})
    gpus_per_worker: float = field(default=0.0, metadata={"ge": 0})
    #: ``backend: train`` only: run every trial of a Tune trial process on one worker group kept across its trials
    #: (:mod:`fairray.train._group`: the same loop, torch.distributed set up once per group) instead of a new Ray
    #: Train run per trial, whose start-up (~19 CPU s of new processes) dwarfs small trials.
    reuse_workers: bool = False

    def __post_init__(self) -> None:
        if self.reuse_workers and self.resolved_backend != "train":
            raise ValueError(f"reuse_workers: true keeps a worker group across trials of backend: train, but the "
                             f"backend is {self.resolved_backend!r} (backend: {self.backend}); set backend: train "
                             "or drop reuse_workers")

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "train" if self.num_workers > 1 or self.gpus_per_worker > 0 else "function"


@dataclass(frozen=True)
class TrackingConfig:
    #: MLflow tracking URI; default: a local SQLite store under ``storage.path``.
    uri: str | None = None
    #: MLflow experiment; default: the spec's ``name``.
    experiment: str | None = None
    #: A sweep's trials log through one MLflow writer actor on the driver's node (trial processes never import
    #: MLflow); ``false``: each trial process writes to the store itself (e.g. many concurrent trials against a
    #: tracking server, which the one writer would serve one request at a time).
    writer: bool = True


@dataclass(frozen=True)
class StorageConfig:
    #: Root of Ray results, checkpoints and the default MLflow store: a local folder or a URI
    #: (``s3://``, ``gs://`` ...) on a cluster.
    path: str = "fairray_runs"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    method: PluginConfig
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: PluginConfig = field(default_factory=lambda: PluginConfig("mlp"))
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    #: Named grids over the same spec (e.g. true vs pseudo vs cluster groups), see :class:`AblationConfig`.
    ablations: Mapping[str, AblationConfig] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name
