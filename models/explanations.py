"""Explanation kinds shared by every model and every post-hoc explainer.

Plain dataclasses with numpy arrays inside. ``to_dict()`` gives a JSON-ready dict (arrays as nested lists), and
``from_dict()`` rebuilds the object, so an explanation can be written next to a run and read back. Intrinsic and
post-hoc explanations of the same kind go through the very same evaluation code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


class _Explanation:
    kind: ClassVar[str] = "explanation"
    _array_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict):
        data = {k: v for k, v in data.items() if k != "kind"}
        for name in cls._array_fields:
            if data.get(name) is not None:
                data[name] = np.asarray(data[name])
        return cls(**data)


@dataclass
class Heatmap(_Explanation):
    """Per-case relevance maps over the input image.

    Attributes:
        maps: float32 [N, H, W]; larger means more relevant. Same H, W as the model's input.
        method: how the map was made (e.g. ``"gradcam"``, ``"prototype_activation"``).
        target: [N] class index each map explains.
        case_ids: [N] case ids, when known.
    """

    kind: ClassVar[str] = "heatmap"
    _array_fields: ClassVar[tuple[str, ...]] = ("maps", "target", "case_ids")

    maps: np.ndarray
    method: str
    target: np.ndarray
    case_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.maps = np.asarray(self.maps, dtype=np.float32)
        if self.maps.ndim != 3:
            raise ValueError(f"Heatmap.maps must be [N, H, W], got shape {self.maps.shape}")
        self.target = np.asarray(self.target, dtype=np.int64).reshape(-1)
        if len(self.target) != len(self.maps):
            raise ValueError(f"Heatmap: {len(self.maps)} maps but {len(self.target)} targets")
        if self.case_ids is not None:
            self.case_ids = np.asarray(self.case_ids, dtype=object)
            if len(self.case_ids) != len(self.maps):
                raise ValueError(f"Heatmap: {len(self.maps)} maps but {len(self.case_ids)} case ids")

    def __len__(self) -> int:
        return len(self.maps)


@dataclass
class PrototypeMatch:
    """One prototype's evidence for one case.

    ``drawings`` (optional) holds where the prototype is on the explained image drawn in several ways, [H, W] each,
    keyed by the :class:`Heatmap` method that draws the top prototype the same way (e.g. the upsampled similarity
    map and a gradient map); the case figure draws the one whose heatmap scored better in the run. Empty: only
    ``activation_map``.
    """

    prototype: int
    prototype_class: int
    similarity: float
    contribution: float
    source_case_id: str
    source_box: tuple[int, int, int, int]  # (row0, col0, row1, col1) in input pixels, end exclusive
    activation_map: np.ndarray  # [H, W] over the explained image
    drawings: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PrototypeEvidence(_Explanation):
    """Per case, the top-k prototypes by logit contribution ("this looks like that")."""

    kind: ClassVar[str] = "prototype_evidence"

    matches: list[list[PrototypeMatch]]
    predicted: np.ndarray
    case_ids: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "matches": [[_to_jsonable(dataclasses.asdict(m)) for m in case] for case in self.matches],
            "predicted": _to_jsonable(np.asarray(self.predicted)),
            "case_ids": _to_jsonable(self.case_ids),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PrototypeEvidence:
        matches = [
            [
                PrototypeMatch(**{**m, "source_box": tuple(m["source_box"]),
                                  "activation_map": np.asarray(m["activation_map"], dtype=np.float32),
                                  "drawings": {k: np.asarray(v, dtype=np.float32)
                                               for k, v in (m.get("drawings") or {}).items()}})
                for m in case
            ]
            for case in data["matches"]
        ]
        ids = data.get("case_ids")
        return cls(matches=matches, predicted=np.asarray(data["predicted"]),
                   case_ids=None if ids is None else np.asarray(ids, dtype=object))


@dataclass
class ConceptEvidence(_Explanation):
    """Predicted clinical concepts and how each moves the logit of the explained class.

    Attributes:
        concept_names: K names.
        predicted: [N, K] predicted concept values (probabilities for binary concepts).
        contribution: [N, K] each concept's additive contribution to the explained logit.
        target: [N] explained class.
        true: optional [N, K] true concept values.
        corrected: with ``true``, per case the concept a test-time intervention corrects (the most wrong one).
        corrected_proba: with ``true``, [N, classes] class probabilities after that correction.
        intercept: [N] what the explained logit adds besides the concepts (a linear head's bias), so that
            ``contribution.sum(1) + intercept`` is the explained logit.
    """

    kind: ClassVar[str] = "concept_evidence"
    _array_fields: ClassVar[tuple[str, ...]] = ("predicted", "contribution", "target", "true", "case_ids",
                                                "corrected_proba", "intercept")

    concept_names: list[str]
    predicted: np.ndarray
    contribution: np.ndarray
    target: np.ndarray
    true: np.ndarray | None = None
    case_ids: np.ndarray | None = None
    corrected: list[str] | None = None
    corrected_proba: np.ndarray | None = None
    intercept: np.ndarray | None = None


@dataclass
class FeatureAttribution(_Explanation):
    """Per-case additive contributions of named (tabular) features to the explained score.

    Attributes:
        feature_names: F names.
        values: [N, F] feature values as the model saw them.
        contribution: [N, F] contribution of each feature.
        target: [N] explained class.
        intercept: the part of the score not attributed to any feature: a float, or [N] when it depends on the
            explained class and the cases explain different classes.
    """

    kind: ClassVar[str] = "feature_attribution"
    _array_fields: ClassVar[tuple[str, ...]] = ("values", "contribution", "target", "case_ids")

    feature_names: list[str]
    values: np.ndarray
    contribution: np.ndarray
    target: np.ndarray
    intercept: float | np.ndarray = 0.0
    case_ids: np.ndarray | None = None


@dataclass
class GlobalExplanation(_Explanation):
    """A model's whole decision logic in readable form.

    Attributes:
        form: what ``content`` holds: ``"weights"``, ``"rules"``, ``"shape_functions"``, ``"score_table"``,
            ``"prototype_gallery"``.
        content: a JSON-ready dict whose layout depends on ``form`` (documented by each model).
        text: an optional plain-text rendering (rules, score table).
    """

    kind: ClassVar[str] = "global"

    form: str
    content: dict = field(default_factory=dict)
    text: str = ""


@dataclass
class Counterfactual(_Explanation):
    """Per case, the smallest change of the model's inputs found that flips its decision, in a named space.

    Attributes:
        space: what was changed: ``"features"`` (a tabular model's feature table, each feature kept within its
            training range) or ``"concepts"`` (a concept bottleneck's concepts).
        cases: one dict per case: ``from_class`` and ``to_class`` (indices), ``found`` (the decision flipped),
            ``changes`` (a list of ``{"name", "before", "after", "delta", "scaled_delta"}`` plus ``"description"``
            where known; ``scaled_delta`` is the change in the unit of ``cost_unit``), ``cost`` (the sum of the
            absolute scaled changes), ``proba_before`` and ``proba_after`` (class probabilities).
        cost_unit: the unit of ``scaled_delta`` and ``cost`` (e.g. "training standard deviations", "flips").
        class_names: the class names, for the text.
    """

    kind: ClassVar[str] = "counterfactual"
    _array_fields: ClassVar[tuple[str, ...]] = ("case_ids",)

    space: str
    cases: list
    cost_unit: str = ""
    class_names: list | None = None
    case_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def text(self, i: int = 0) -> str:
        """Case ``i``'s counterfactual in words, e.g. "predicted malignant; would be benign if: A were 1.2 instead
        of 3.4 (-1.1 sd)"."""
        c = self.cases[i]
        names = self.class_names or []

        def cls(k: int) -> str:
            return str(names[k]) if 0 <= k < len(names) else f"class {k}"

        if not c["changes"] and not c["found"]:
            return f"predicted {cls(c['from_class'])}; no change within the search space flips it to " \
                   f"{cls(c['to_class'])}"
        parts = []
        for ch in c["changes"]:
            what = f"{ch['name']} were {ch['after']:.4g} instead of {ch['before']:.4g}"
            if self.space == "features":
                what += f" ({ch['scaled_delta']:+.2f} sd)"  # robust sds (cost_unit)
            if ch.get("description"):
                what += f" [{ch['description']}]"
            parts.append(what)
        verb = "would be" if c["found"] else "would still not be"
        p_after = c["proba_after"][c["to_class"]]
        return (f"predicted {cls(c['from_class'])}; {verb} {cls(c['to_class'])} (p = {p_after:.2f}) if "
                + "; ".join(parts))


EXPLANATION_KINDS: dict[str, type] = {
    cls.kind: cls for cls in (Heatmap, PrototypeEvidence, ConceptEvidence, FeatureAttribution, GlobalExplanation,
                              Counterfactual)
}
