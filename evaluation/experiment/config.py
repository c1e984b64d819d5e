"""Experiment configuration: YAML in, validated dataclasses out.

Every key is checked: an unknown key or a value of the wrong type raises :class:`ConfigError` naming the file and
the dotted key (e.g. ``configs/x.yaml: training.max_epoch: unknown key``). Model names and their keyword arguments
are checked against the registry before any data is loaded. Plain YAML only: nothing is evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasszoo.evaluation.quality import ROAD_FRACTIONS, ROAD_NOISE
from glasszoo.evaluation.surrogates import DEFAULT_SURROGATES
from glasszoo.models import ConfigError, check_kwargs, list_models, model_info
from glasszoo.training.settings import FeaturesConfig, TrainingConfig

PIPELINE_KWARGS = ("num_classes", "in_chans", "img_size")


def _default_posthoc_methods() -> list[str]:
    from glasszoo.evaluation.posthoc import DEFAULT_METHODS  # heavy: captum, zennit (not needed to parse)

    return list(DEFAULT_METHODS)


@dataclass
class PosthocConfig:
    """Post-hoc explainers (``glasszoo.evaluation.posthoc``) run on image models after training.

    Attributes:
        models: which models get them: model names, families (``"black-box"``) or ``"all"``.
        methods: which methods (default: all of ``DEFAULT_METHODS``); each gives a :class:`Heatmap` scored by the
            same quality metrics as the models' own maps.
        params: per-method parameter overrides, e.g. ``{integrated_gradients: {n_steps: 16}}``.
        max_cases: per-method cap on the explained test cases (the first ones of the shared explained sample),
            for the perturbation methods whose cost is many forward passes per image.
    """

    models: list[str] = field(default_factory=lambda: ["black-box"])
    methods: list[str] = field(default_factory=_default_posthoc_methods)
    params: dict = field(default_factory=dict)
    max_cases: dict = field(default_factory=lambda: {"occlusion": 32, "kernel_shap": 16, "shapley_sampling": 16,
                                                         "lime": 16})


@dataclass
class QualityConfig:
    """Explanation-quality metrics (``glasszoo.evaluation.quality``) computed for every heatmap of a run.

    Attributes:
        enabled: compute them (localisation against masks is computed regardless).
        cases: explained cases the perturbation metrics use (the first ones of the explained sample; -1 = all).
        steps: deletion / insertion steps (2 * (steps + 1) forward passes per image).
        baseline: what deleted patches become: ``"zero"`` (black), ``"mean"`` or ``"blur"``.
        faithfulness_subsets: random patch subsets of the faithfulness correlation (one forward pass each).
        randomisation_stages: cascading-randomisation stages (top third, two thirds, all parameters for 3).
        randomisation_cases: cases of the randomisation check and of the max-sensitivity (at most a quarter of the
            cases the method explained, at least 2).
        sensitivity_samples: noisy copies per case for the max-sensitivity.
        sensitivity_radius: half-width of the uniform input noise of the max-sensitivity (images in [0, 1]).
        road: compute ROAD (remove and debias, Rong et al. 2022) beside deletion / insertion.
        road_fractions: shares of the pixels ROAD removes (each in (0, 1); two forward passes per share and image).
        road_noise: standard deviation of the noise of ROAD's linear imputation (the paper's 0.01).
        smooth_randomisation_samples: noisy copies per case of the smooth randomisation test (sMPRT, Hedstrom et
            al.), which compares the maps of the trained and the fully randomised model each averaged over them
            (0 = off; the paper's 50 cost 50 explanations per case and model).
        smooth_randomisation_noise: standard deviation of sMPRT's input noise (images in [0, 1]).
    """

    enabled: bool = True
    cases: int = 32
    steps: int = 12
    baseline: str = "zero"
    faithfulness_subsets: int = 16
    randomisation_stages: int = 3
    randomisation_cases: int = 8
    sensitivity_samples: int = 3
    sensitivity_radius: float = 0.02
    road: bool = True
    road_fractions: list[float] = field(default_factory=lambda: list(ROAD_FRACTIONS))
    road_noise: float = ROAD_NOISE
    smooth_randomisation_samples: int = 8
    smooth_randomisation_noise: float = 0.05


@dataclass
class PrototypePartsConfig:
    """Consistency and stability of a prototype model's prototypes (``glasszoo.evaluation.prototype_parts``; Huang
    et al., ICCV 2023), under the model's ``explanation.prototype_quality``.

    Attributes:
        cases: test cases they are computed on (a seeded sample of the test split; 0 = off, -1 = all).
        threshold: share of a prototype's images on which it must hit the lesion to be consistent (paper: 0.8).
        noise: sd of the Gaussian noise of the stability, for images in [0, 1] (clipped at +-1.25 sd).
        region: half-side of a prototype's activated region as a fraction of the image side (0: the peak pixel;
            the paper's box: 0.16).
    """

    cases: int = 64
    threshold: float = 0.8
    noise: float = 0.05
    region: float = 0.0


def _default_surrogates() -> dict:
    return {k: {"model": v["model"], "params": dict(v["params"])} for k, v in DEFAULT_SURROGATES.items()}


@dataclass
class SurrogatesConfig:
    """Global surrogates (``glasszoo.evaluation.surrogates``): readable models fitted to an image model's predicted
    classes on the run's feature table, scored by their fidelity to it and their accuracy, on the test split.

    Attributes:
        enabled: fit them (only in runs that read a feature table, i.e. with at least one tabular model).
        of: the image models imitated: model names, families (``"black-box"``) or ``"all"``.
        models: surrogate name -> ``{model: registry name of a tabular model, params: {...}}`` (default: a depth-3
            tree, a 5-feature sparse logistic regression and an EBM).
    """

    enabled: bool = True
    of: list[str] = field(default_factory=lambda: ["black-box"])
    models: dict = field(default_factory=_default_surrogates)


@dataclass
class EvaluationConfig:
    """How models are evaluated on the test split."""

    bootstrap: int = 1000
    ci_level: float = 0.95
    explain_cases: int = 64  # test cases explained per model (0 = none, -1 = all)
    sample_seed: int | None = None  # seed of the sample of explained test cases (None: the run's seed)
    figure_cases: int = 8  # cases shown in each model's explanation figure
    case_figures_per_class: int = 2  # explained test cases per true class that get a per-case figure per model
    comparison_cases_per_class: int = 2  # cases per class in the all-methods comparison grid (figures/comparison.png)
    report_misclassified: int = 6  # misclassified test cases (by any model) that also get case figures and a case page
    posthoc: PosthocConfig = field(default_factory=PosthocConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    prototype_parts: PrototypePartsConfig = field(default_factory=PrototypePartsConfig)
    surrogates: SurrogatesConfig = field(default_factory=SurrogatesConfig)


@dataclass
class ModelSpec:
    """One model of the experiment: ``name`` is its result key, ``model`` its registry name; ``training`` and
    ``features`` override the config's sections of the same names for this model only (e.g. the same glass-box
    model on ground-truth and on predicted lesion masks, side by side in one run)."""

    name: str
    model: str = ""
    params: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    experiment: str
    data: dict
    models: list[ModelSpec]
    seed: int = 0
    output_dir: str = "runs"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    # image models trained side by side on the CPU, each in a worker process with one torch thread (1: one after
    # another in the run's own process, on every core); ignored on a GPU. Not a result setting, but a model trained
    # on one thread differs from one trained on several in floating-point order (docs/performance.md)
    workers: int = 1
    source: str = ""  # the file it came from

    def training_for(self, spec: ModelSpec) -> TrainingConfig:
        """The training settings of one model: the shared ones with the model's overrides applied."""
        merged = _merge(dataclasses.asdict(self.training), spec.training)
        where = f"models[{spec.name}].training" if spec.training else "training"
        return _validate_training(_build(TrainingConfig, merged, where, self.source), where, self.source)

    def features_for(self, spec: ModelSpec) -> FeaturesConfig:
        """The feature settings of one model: the shared ones with the model's overrides applied, and with
        ``region: predicted`` the segmenter resolved to a model of this config."""
        where = f"models[{spec.name}].features" if spec.features else "features"
        fc = self.features
        if spec.features:
            fc = _build(FeaturesConfig, _merge(dataclasses.asdict(self.features), spec.features), where, self.source)
        if fc.region != "predicted":
            return fc
        prefix = f"{self.source}: " if self.source else ""
        segmenters = [s.name for s in self.models if model_info(s.model).cls.segments]
        seg = fc.segmenter or (segmenters[0] if segmenters else None)
        if seg is None:
            raise ConfigError(f"{prefix}{where}.region: predicted needs a model of the config that segments (e.g. "
                              f"attention_unet), whose masks the features are computed in; there is none")
        if seg not in segmenters:
            raise ConfigError(f"{prefix}{where}.segmenter: {seg!r} is not a model of this config that segments "
                              f"(those are: {segmenters or 'none'})")
        return dataclasses.replace(fc, segmenter=seg)

    def segmenters_used(self) -> list[str]:
        """The models whose predicted masks some tabular model reads (``features.region: predicted``)."""
        used = []
        for spec in self.models:
            if model_info(spec.model).input_kind == "features":
                seg = self.features_for(spec).segmenter
                if seg and seg not in used:
                    used.append(seg)
        return used

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        if d["workers"] == 1:  # configs written before the setting existed stay byte-identical
            d.pop("workers")
        for m in d["models"]:  # configs written before per-model features stay byte-identical
            if not m.get("features"):
                m.pop("features", None)
        return d


CHOICES = {
    "optimizer": ("adamw", "adam", "sgd"),
    "scheduler": ("cosine", "onecycle", "none"),
    "class_weighting": ("auto", "balanced", "none"),
}


def _validate_training(tc: TrainingConfig, where: str, src: str) -> TrainingConfig:
    prefix = f"{src}: " if src else ""
    for key, allowed in CHOICES.items():
        if getattr(tc, key) not in allowed:
            raise ConfigError(f"{prefix}{where}.{key}: must be one of {allowed}, got {getattr(tc, key)!r}")
    for key in ("max_epochs", "batch_size"):
        if getattr(tc, key) < 1:
            raise ConfigError(f"{prefix}{where}.{key}: must be >= 1, got {getattr(tc, key)}")
    if tc.lr <= 0:
        raise ConfigError(f"{prefix}{where}.lr: must be > 0, got {tc.lr}")
    _validate_hardware(tc, f"{prefix}{where}")
    return tc


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _validate_hardware(tc: TrainingConfig, at: str) -> None:
    """The device, precision, loader and distribution keys (what the Lightning Trainer receives)."""
    if tc.precision not in PRECISIONS:
        raise ConfigError(f"{at}.precision: must be one of {PRECISIONS}, got {tc.precision!r}")
    if tc.accelerator not in ACCELERATORS:
        raise ConfigError(f"{at}.accelerator: must be one of {ACCELERATORS}, got {tc.accelerator!r}")
    d = tc.devices
    ok = (d == "auto" or (isinstance(d, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", d.strip()) is not None)
          or (isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1))
          or (isinstance(d, list) and d and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                for i in d)))
    if not ok:
        raise ConfigError(f"{at}.devices: must be 'auto', a count >= 1 (-1 = all) or a list of device indices "
                          f"(e.g. [0, 1] or '0,1'), got {d!r}")
    if tc.num_workers < 0:
        raise ConfigError(f"{at}.num_workers: must be >= 0, got {tc.num_workers}")
    if tc.pin_memory != "auto" and not isinstance(tc.pin_memory, bool):
        raise ConfigError(f"{at}.pin_memory: must be 'auto', true or false, got {tc.pin_memory!r}")
    if tc.num_nodes < 1:
        raise ConfigError(f"{at}.num_nodes: must be >= 1, got {tc.num_nodes}")
    if tc.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry  # heavy: Lightning, only for a strategy name

        known = sorted(StrategyRegistry.available_strategies())
        if tc.strategy not in known:
            raise ConfigError(f"{at}.strategy: must be 'auto' or a Lightning strategy name (e.g. 'ddp'), "
                              f"got {tc.strategy!r}; known: {known}")
    elif tc.num_nodes > 1:
        raise ConfigError(f"{at}.num_nodes: {tc.num_nodes} nodes need a distributed strategy (e.g. strategy: ddp)")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_type(value: Any, hint: Any, where: str, src: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return value  # unions are checked by their consumers
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}{where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{src}{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]", src) for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}{where}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, where: str, src: str):
    prefix = f"{src}: " if src else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}{where + '.' if where else ''}{unknown[0]}: unknown key; known keys: {names}")
    kwargs = {}
    for k, v in data.items():
        key = f"{where}.{k}" if where else k
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(hint, v, key, src)
        else:
            kwargs[k] = _check_type(v, hint, key, prefix)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix}{where or 'config'}: {exc}") from None


def _parse_models(raw: Any, src: str) -> list[ModelSpec]:
    prefix = f"{src}: " if src else ""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{prefix}models: expected a non-empty list of models, got {raw!r}")
    specs: list[ModelSpec] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{prefix}models[{i}]: expected a mapping with a 'name', got {entry!r}")
        spec = _build(ModelSpec, entry, f"models[{i}]", src)
        spec.model = spec.model or spec.name
        try:
            info = model_info(spec.model)
            clash = sorted(set(spec.params) & set(PIPELINE_KWARGS) & set(info.parameters))  # filled from the data
            if clash:
                raise ConfigError(f"{clash} are set from the data and cannot be given")
            check_kwargs(spec.model, spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}models[{i}] ({spec.name}): {exc}") from None
        if any(s.name == spec.name for s in specs):
            raise ConfigError(f"{prefix}models[{i}]: duplicate model name '{spec.name}'")
        specs.append(spec)
    return specs


def parse_config(raw: dict, source: str = "") -> ExperimentConfig:
    """Validate a config dict (as read from YAML) into an :class:`ExperimentConfig`."""
    prefix = f"{source}: " if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}the config must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    for req in ("experiment", "data", "models"):
        if req not in raw:
            raise ConfigError(f"{prefix}missing required key '{req}'")
    models = _parse_models(raw.pop("models"), source)
    if not isinstance(raw["data"], dict):
        raise ConfigError(f"{prefix}data: expected a mapping, got {raw['data']!r}")
    cfg = _build(ExperimentConfig, {**raw, "models": []}, "", source)
    cfg.models = models
    cfg.source = source
    if not isinstance(cfg.experiment, str) or not cfg.experiment or "/" in cfg.experiment:
        raise ConfigError(f"{prefix}experiment: must be a non-empty name without '/', got {cfg.experiment!r}")
    if cfg.workers < 1:  # _build has checked that it is an integer
        raise ConfigError(f"{prefix}workers: expected an integer >= 1 (processes training image models side by "
                          f"side), got {cfg.workers!r}")
    for spec in models:  # validate per-model training and feature overrides now, not after hours of training
        cfg.training_for(spec)
        if spec.features and model_info(spec.model).input_kind != "features":
            raise ConfigError(f"{prefix}models[{spec.name}].features: only models reading a feature table take "
                              f"feature settings ('{spec.model}' reads images)")
        cfg.features_for(spec)
    _validate_evaluation(cfg, prefix)
    return cfg


def _validate_evaluation(cfg: ExperimentConfig, prefix: str) -> None:
    """Post-hoc methods, their parameters and the quality settings, checked before any training."""
    from glasszoo.evaluation.posthoc import POSTHOC_METHODS  # heavy: captum, zennit (not needed to parse)

    ph, q = cfg.evaluation.posthoc, cfg.evaluation.quality
    where = "evaluation.posthoc"
    known = sorted(POSTHOC_METHODS)
    for i, m in enumerate(ph.methods):
        if m not in POSTHOC_METHODS:
            raise ConfigError(f"{prefix}{where}.methods[{i}]: unknown method {m!r}; known: {known}")
    for section in ("params", "max_cases"):
        for m, v in getattr(ph, section).items():
            if m not in POSTHOC_METHODS:
                raise ConfigError(f"{prefix}{where}.{section}.{m}: unknown method; known: {known}")
            if section == "params":
                if not isinstance(v, dict):
                    raise ConfigError(f"{prefix}{where}.params.{m}: expected a mapping, got {v!r}")
                bad = sorted(set(v) - set(POSTHOC_METHODS[m]))
                if bad:
                    raise ConfigError(f"{prefix}{where}.params.{m}.{bad[0]}: unknown parameter; "
                                      f"known: {sorted(POSTHOC_METHODS[m])}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{prefix}{where}.max_cases.{m}: expected an integer >= 1, got {v!r}")
    names = {s.name for s in cfg.models}
    families = {model_info(n).family for n in list_models()}
    for i, sel in enumerate(ph.models):
        if sel != "all" and sel not in names and sel not in families:
            raise ConfigError(f"{prefix}{where}.models[{i}]: {sel!r} is neither a model of this config "
                              f"({sorted(names)}), a model family ({sorted(families)}) nor 'all'")
    if q.baseline not in ("zero", "mean", "blur"):
        raise ConfigError(f"{prefix}evaluation.quality.baseline: must be 'zero', 'mean' or 'blur', got {q.baseline!r}")
    for key in ("steps", "faithfulness_subsets", "randomisation_stages", "sensitivity_samples"):
        if getattr(q, key) < 1:
            raise ConfigError(f"{prefix}evaluation.quality.{key}: must be >= 1, got {getattr(q, key)}")
    if not 0.0 < q.sensitivity_radius <= 1.0:
        raise ConfigError(f"{prefix}evaluation.quality.sensitivity_radius: must lie in (0, 1], "
                          f"got {q.sensitivity_radius}")
    bad = [f for f in q.road_fractions if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1]
    if not q.road_fractions or bad:
        raise ConfigError(f"{prefix}evaluation.quality.road_fractions: expected shares of the pixels in (0, 1), "
                          f"got {q.road_fractions!r}")
    for key in ("road_noise", "smooth_randomisation_noise"):
        v = getattr(q, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{prefix}evaluation.quality.{key}: must be a number >= 0, got {v!r}")
    if cfg.evaluation.sample_seed is not None and (isinstance(cfg.evaluation.sample_seed, bool)
                                                   or not isinstance(cfg.evaluation.sample_seed, int)):
        raise ConfigError(f"{prefix}evaluation.sample_seed: must be an integer or null, "
                          f"got {cfg.evaluation.sample_seed!r}")
    v = q.smooth_randomisation_samples
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{prefix}evaluation.quality.smooth_randomisation_samples: must be an integer >= 0 "
                          f"(0 = off), got {v!r}")
    sg = cfg.evaluation.surrogates
    for i, sel in enumerate(sg.of):
        if sel != "all" and sel not in names and sel not in families:
            raise ConfigError(f"{prefix}evaluation.surrogates.of[{i}]: {sel!r} is neither a model of this config "
                              f"({sorted(names)}), a model family ({sorted(families)}) nor 'all'")
    if not isinstance(sg.models, dict):
        raise ConfigError(f"{prefix}evaluation.surrogates.models: expected a mapping of name -> {{model, params}}, "
                          f"got {sg.models!r}")
    for name, spec in sg.models.items():
        where = f"{prefix}evaluation.surrogates.models.{name}"
        if not isinstance(spec, dict) or "model" not in spec or set(spec) - {"model", "params"}:
            raise ConfigError(f"{where}: expected {{model: NAME, params: {{...}}}}, got {spec!r}")
        try:
            kind = model_info(spec["model"]).input_kind
        except ConfigError as exc:
            raise ConfigError(f"{where}.model: {exc}") from None
        if kind != "features":
            raise ConfigError(f"{where}.model: '{spec['model']}' is an image model; a surrogate is a tabular model "
                              f"of the feature table (e.g. decision_tree, sparse_logreg, ebm)")
        if not isinstance(spec.get("params", {}), dict):
            raise ConfigError(f"{where}.params: expected a mapping, got {spec['params']!r}")
        try:
            check_kwargs(spec["model"], spec.get("params", {}))
        except ConfigError as exc:
            raise ConfigError(f"{where}.params: {exc}") from None
    pp = cfg.evaluation.prototype_parts
    if not 0.0 < pp.threshold <= 1.0 or pp.noise < 0 or not 0.0 <= pp.region <= 1.0:
        raise ConfigError(f"{prefix}evaluation.prototype_parts: threshold must lie in (0, 1], noise be >= 0 and "
                          f"region lie in [0, 1]; got {pp.threshold}, {pp.noise}, {pp.region}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. training.max_epochs=2)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if isinstance(node, list):
                try:
                    node = node[int(p)]
                except (ValueError, IndexError):
                    raise ConfigError(f"override {item!r}: '{p}' is not an index of the list") from None
            else:
                node = node.setdefault(p, {})
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(node, list):
            node[int(parts[-1])] = parsed
        else:
            node[parts[-1]] = parsed
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML experiment config."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(raw, str(path))
