"""Concept bottleneck models: predict named clinical concepts, then the diagnosis from the concepts alone."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from glasszoo.models._backbones import attach_input_prep, create_backbone, effective_size, gradcam_forward
from glasszoo.models._linear import fit_sparse_linear
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel, as_tensor, batched_no_grad
from glasszoo.models.counterfactuals import concept_counterfactual
from glasszoo.models.errors import DataError
from glasszoo.models.explanations import ConceptEvidence, Counterfactual, GlobalExplanation, Heatmap
from glasszoo.models.scoring import auc_score

PAPER = 'Koh et al., "Concept Bottleneck Models", ICML 2020'
MODES = ("joint", "sequential", "independent")
CONCEPT_KINDS = ("binary", "continuous")


def concept_spec(data: Any, train_rows: np.ndarray) -> dict:
    """The concept description a CBM is built with, from the concepts of the *training* rows of ``data``.

    A concept whose training values are all 0 or 1 is ``binary`` (predicted as a probability); any other is
    ``continuous`` (predicted standardised by the training mean and standard deviation). Raises
    :class:`DataError` when the data has no concepts, saying what is needed.
    """
    if data.concepts is None or not len(data.concept_names):
        raise DataError(
            f"data set '{data.name}' has no concepts, which a concept bottleneck model needs: give concept "
            f"columns (folder source: numeric CSV columns, data.concept_columns), or lesion masks with "
            f"data.concepts: derived (concepts computed from the masks)")
    c = np.asarray(data.concepts, dtype=np.float64)[train_rows]
    kinds, center, scale = [], [], []
    for k in range(c.shape[1]):
        binary = bool(np.isin(c[:, k], (0.0, 1.0)).all())
        kinds.append("binary" if binary else "continuous")
        center.append(0.0 if binary else float(c[:, k].mean()))
        sd = float(c[:, k].std())
        scale.append(1.0 if binary else (sd if sd > 0 else 1.0))
    return {"concept_names": list(data.concept_names), "concept_kinds": kinds, "concept_center": center,
            "concept_scale": scale}


@register_model("cbm", family="concept", paper=PAPER,
                test_kwargs={"backbone": "resnet18", "concept_names": ["a", "b", "c"],
                             "concept_kinds": ["binary", "binary", "continuous"], "concept_center": [0.0, 0.0, 1.0],
                             "concept_scale": [1.0, 1.0, 0.5]})
class ConceptBottleneck(ImageModel):
    """Concept bottleneck model: image -> K concepts -> label, the label from the concepts only.

    Koh et al., "Concept Bottleneck Models", ICML 2020. A timm CNN predicts the concepts (its classifier has K
    outputs: a logit per binary concept, a standardised value per continuous one). The label head is one linear
    layer on the *concept activations* ``a`` (the probability of each binary concept, the standardised value of each
    continuous one), so each concept adds ``w[c, k] * a_k`` to the logit of class c: the weights are the global
    explanation, and correcting a concept changes the logit by exactly ``w[c, k] * (true - predicted)``.

    Training modes (the paper's three):

    * ``joint``: backbone, concept head and label head together on ``CE(label) + concept_weight * concept loss``
      (binary cross-entropy / mean squared error), with an L1 penalty ``label_l1`` on the label weights.
    * ``sequential``: the concept model trains on the concept loss only; the label head is then fitted on the
      concept model's *predicted* activations of the training split.
    * ``independent``: the concept model as in sequential; the label head is fitted on the *true* training
      concepts (and at test time reads the predicted ones).

    In the sequential and independent modes the label head is not trained by SGD: it is the L1-penalised logistic
    regression of :func:`fit_sparse_linear` (convex, fitted exactly), refitted before every validation so each
    epoch's validation AUC (what selects the checkpoint) is the AUC of the full concept-to-label model. With
    ``head_fit_cases`` the sequential head of each validation is fitted on that many training cases only (a fixed
    random subsample: the concept predictions of the whole split, every epoch, cost a third of an epoch's training),
    and the chosen epoch's head once more on the whole training split at the end.

    Args:
        num_classes, in_chans, img_size: task and input.
        concept_names, concept_kinds, concept_center, concept_scale: the concepts (from :func:`concept_spec`,
            filled in from the data by the pipeline).
        backbone: timm model name (trained from scratch). stem: see ``glasszoo.models._backbones``.
        mode: ``joint``, ``sequential`` or ``independent``.
        concept_weight: lambda, the concept-loss weight of the joint mode (the paper tunes it; 1.0 by default).
        label_l1: L1 penalty on the label-head weights (sparsity, readability).
        head_fit_cases: sequential mode: the training cases the label head is fitted on before each validation
            (a random subsample drawn with seed 0; the final head is fitted on all of them); None: all, every time.
        output_stride: 32 (the backbone as designed), or 16 / 8: the last stage(s) dilated instead of strided, so
            the concept Grad-CAM (its heatmap) has 2x / 4x the resolution, at a higher compute cost (as the black
            box's ``output_stride``).
        pretrained: ``False`` (random initialisation), ``True`` (timm's own weights; offline they must be in the
            Hugging Face cache) or the path of a weights file (see :mod:`glasszoo.models._backbones`).
        normalize: ``"none"`` or ``"imagenet"``: the standardisation pretrained weights expect, applied in the model.
        input_size: resize inputs to this side inside the model (e.g. 224 for weights trained there); None: as given.
    """

    explanation_kinds = ("concept_evidence", "heatmap")
    requires = ("concepts",)

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 concept_names: list[str] | None = None, concept_kinds: list[str] | None = None,
                 concept_center: list[float] | None = None, concept_scale: list[float] | None = None,
                 backbone: str = "resnet18", stem: str = "auto", mode: str = "joint", concept_weight: float = 1.0,
                 label_l1: float = 1e-3, output_stride: int = 32, head_fit_cases: int | None = None,
                 pretrained: bool | str = False, normalize: str = "none", input_size: int | None = None) -> None:
        super().__init__(num_classes, in_chans, img_size)
        if not concept_names:
            raise ValueError("a concept bottleneck model needs at least one concept (concept_names)")
        k = len(concept_names)
        kinds = list(concept_kinds or ["binary"] * k)
        center = list(concept_center or [0.0] * k)
        scale = list(concept_scale or [1.0] * k)
        if not len(kinds) == len(center) == len(scale) == k:
            raise ValueError(f"concept_kinds, concept_center and concept_scale need {k} entries each")
        bad = [t for t in kinds if t not in CONCEPT_KINDS]
        if bad:
            raise ValueError(f"concept kind {bad[0]!r} is not one of {CONCEPT_KINDS}")
        if len(set(concept_names)) != k:
            raise ValueError(f"concept names must be unique, got {concept_names}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if concept_weight < 0 or label_l1 < 0:
            raise ValueError("concept_weight and label_l1 must be >= 0")
        if head_fit_cases is not None and (isinstance(head_fit_cases, bool) or not isinstance(head_fit_cases, int)
                                           or head_fit_cases < 1):
            raise ValueError(f"head_fit_cases must be a positive integer or None, got {head_fit_cases!r}")
        self.concept_names = [str(c) for c in concept_names]
        self.concept_kinds = kinds
        self.mode = mode
        self.concept_weight = float(concept_weight)
        self.label_l1 = float(label_l1)
        self.head_fit_cases = head_fit_cases
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.net, self.stem = create_backbone(backbone, k, in_chans, effective_size(self.img_size, input_size), stem,
                                              output_stride=output_stride, pretrained=pretrained)
        self.input_prep = attach_input_prep(self.net, in_chans, normalize, input_size)
        self.label_head = nn.Linear(k, num_classes)
        self.register_buffer("binary", torch.tensor([t == "binary" for t in kinds]), persistent=False)
        self.register_buffer("concept_center", torch.tensor(center, dtype=torch.float32))
        self.register_buffer("concept_scale", torch.tensor(scale, dtype=torch.float32))
        self._cache: torch.Tensor | None = None
        if mode != "joint":
            self.label_head.requires_grad_(False)

    @classmethod
    def data_params(cls, data: Any, train_rows: np.ndarray) -> dict:
        """The concepts of the data and their training-split scaling (:func:`concept_spec`)."""
        return concept_spec(data, train_rows)

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    # ------------------------------------------------------------------ the network
    def concept_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concept outputs [N, K]: logits of binary concepts, standardised values of continuous ones."""
        return self.net(x)

    def activations(self, outputs: torch.Tensor) -> torch.Tensor:
        """Concept activations the label head reads: sigmoid of binary logits, continuous values as they are."""
        return torch.where(self.binary, torch.sigmoid(outputs), outputs)

    def standardise(self, concepts: torch.Tensor) -> torch.Tensor:
        """True concepts in data units -> activations (binary unchanged, continuous standardised)."""
        return (concepts - self.concept_center) / self.concept_scale

    def to_data_units(self, activations: torch.Tensor) -> torch.Tensor:
        """Activations -> data units (binary: probabilities; continuous: de-standardised values)."""
        return activations * self.concept_scale + self.concept_center

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.concept_outputs(x)
        self._cache = out if self.training else None
        return self.label_head(self.activations(out))

    @property
    def task_loss_weight(self) -> float:
        return 1.0 if self.mode == "joint" else 0.0

    def concept_loss(self, outputs: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """Mean over concepts of the binary cross-entropy (binary) or squared error (standardised continuous)."""
        target = self.standardise(concepts.float())
        bce = F.binary_cross_entropy_with_logits(outputs, target.clamp(0, 1), reduction="none")
        mse = (outputs - target) ** 2
        return torch.where(self.binary, bce, mse).mean()

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``concept``: the weighted concept loss (weight 1 in the two-stage modes, ``concept_weight`` in joint);
        ``label_l1``: the L1 penalty on the label weights (joint mode; the other modes fit it in closed form)."""
        if "concepts" not in batch:
            raise DataError("the batch has no concepts: a concept bottleneck model needs data with concepts")
        out = self._cache if self._cache is not None else self.concept_outputs(batch["image"])
        weight = self.concept_weight if self.mode == "joint" else 1.0
        terms = {"concept": weight * self.concept_loss(out, batch["concepts"])}
        if self.mode == "joint" and self.label_l1 > 0:
            terms["label_l1"] = self.label_l1 * self.label_head.weight.abs().sum()
        return terms

    def training_callbacks(self, caseset: Any) -> list:
        return [] if self.mode == "joint" else [LabelHeadFit(self, caseset)]

    def finish_training(self, caseset: Any) -> bool:
        """Sequential mode with ``head_fit_cases``: the chosen epoch's label head fitted on the whole training
        split (its validations saw a subsample)."""
        if self.mode != "sequential" or self.head_fit_cases is None:
            return False
        LabelHeadFit(self, caseset, subsample=False).fit()
        return True

    # ------------------------------------------------------------------ concept prediction and intervention
    def predict_concepts(self, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Concept activations [N, K] (binary: probability; continuous: standardised value)."""
        out = batched_no_grad(self, x, batch_size, lambda xb: self.activations(self.concept_outputs(xb)))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.n_concepts), np.float32)

    @torch.no_grad()
    def intervene(self, activations: np.ndarray, true_concepts: np.ndarray, corrected: np.ndarray) -> np.ndarray:
        """Label logits after replacing the predicted activations by the true concepts where ``corrected``.

        Args:
            activations: predicted activations [N, K] (from :meth:`predict_concepts`).
            true_concepts: true (or clinician-given) concepts [N, K] in data units.
            corrected: boolean [N, K] (or [K] for every case): which concepts to replace.
        Returns:
            logits [N, classes]; the logit of class c moves by exactly ``w[c, k] * (true_k - predicted_k)`` per
            corrected concept k.
        """
        a = torch.as_tensor(np.asarray(activations), dtype=torch.float32, device=self.device)
        t = self.standardise(torch.as_tensor(np.asarray(true_concepts), dtype=torch.float32, device=self.device))
        m = torch.as_tensor(np.broadcast_to(np.asarray(corrected, dtype=bool), a.shape).copy(), device=self.device)
        return self.label_head(torch.where(m, t, a)).cpu().numpy()

    def set_concepts(self, x: np.ndarray | torch.Tensor, values: dict[str, float]) -> np.ndarray:
        """Class probabilities [N, classes] of images ``x`` with the concepts named in ``values`` set to the given
        values (data units: 1 present, 0 absent for a binary concept) and the others as predicted: a test-time
        intervention (Koh et al. 2020) by a reader, through :meth:`intervene`."""
        unknown = [k for k in values if k not in self.concept_names]
        if unknown:
            raise ValueError(f"unknown concept {unknown[0]!r}; the model's concepts: {', '.join(self.concept_names)}")
        act = self.predict_concepts(x)
        given = np.zeros((1, self.n_concepts), np.float32)
        fix = np.zeros(self.n_concepts, dtype=bool)
        for name, v in values.items():
            k = self.concept_names.index(name)
            given[0, k], fix[k] = float(v), True
        logits = self.intervene(act, np.repeat(given, len(act), axis=0), fix)
        return torch.softmax(torch.as_tensor(logits), 1).numpy()

    CONTINUOUS_RANGE: ClassVar[tuple[float, float]] = (-2.0, 2.0)
    """The standardised values a counterfactual may set a continuous concept to (two training sds either side of
    its training mean)."""

    def counterfactual(self, x: np.ndarray | torch.Tensor, target: np.ndarray | int | None = None,
                       max_changes: int = 3, class_names: list[str] | None = None,
                       case_ids: np.ndarray | None = None) -> Counterfactual:
        """Per image, the fewest concepts that must flip (binary: present <-> absent; continuous: to the end of
        :data:`CONTINUOUS_RANGE` that favours the target) for the label head to decide ``target`` (default: the
        runner-up class), at most ``max_changes`` concepts
        (:func:`glasszoo.models.counterfactuals.concept_counterfactual`). The moves are test-time interventions
        (:meth:`intervene`) a reader could make; the values in the text are in data units."""
        act = self.predict_concepts(x)
        binary = self.binary.cpu().numpy().tolist()

        @torch.no_grad()
        def logits(rows: np.ndarray) -> np.ndarray:
            return self.label_head(torch.as_tensor(rows, dtype=torch.float32, device=self.device)).cpu().numpy()

        def units(k: int, v: float) -> float:
            one = torch.zeros(1, self.n_concepts, device=self.device)
            one[0, k] = float(v)
            return float(self.to_data_units(one)[0, k])

        targets = np.broadcast_to(np.asarray(-1 if target is None else target), (len(act),))
        cases = [concept_counterfactual(logits, a, self.concept_names, binary, self.CONTINUOUS_RANGE,
                                        target=None if int(t) < 0 else int(t), max_changes=max_changes,
                                        to_data_units=units) for a, t in zip(act, targets)]
        return Counterfactual(space="concepts", cases=cases, cost_unit="concepts moved", class_names=class_names,
                              case_ids=case_ids)

    def correct_worst(self, activations: np.ndarray, true_concepts: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Test-time intervention on each case's most wrong concept: (its name per case, the class probabilities
        [N, classes] after replacing it by the true value)."""
        truth = self.standardise(torch.as_tensor(np.asarray(true_concepts, np.float32), device=self.device))
        worst = np.abs(truth.cpu().numpy() - activations).argmax(1)
        fix = np.zeros_like(activations, dtype=bool)
        fix[np.arange(len(fix)), worst] = True
        logits = self.intervene(activations, np.asarray(true_concepts, np.float32), fix)
        return [self.concept_names[k] for k in worst], torch.softmax(torch.as_tensor(logits), 1).numpy()

    def intervention_curve(self, activations: np.ndarray, true_concepts: np.ndarray, labels: np.ndarray,
                           positive_class: int = 1, order: str = "random", seed: int = 0) -> dict:
        """Task AUC and accuracy as 0, 1, ..., K concepts per case are corrected.

        ``order="random"``: each case's concepts in a seeded random order. ``order="uncertain_first"``: binary
        concepts by ascending ``|p - 0.5|`` (least certain first), continuous concepts after them (the model gives
        no uncertainty for those) in random order.
        """
        n, k = activations.shape
        rng = np.random.default_rng(seed)
        ranks = np.argsort(rng.random((n, k)), axis=1)  # random order per case
        if order == "uncertain_first":
            binary = self.binary.cpu().numpy()
            certainty = np.where(binary[None, :], np.abs(activations - 0.5), np.inf)
            tiebreak = rng.random((n, k))
            ranks = np.lexsort((tiebreak, certainty), axis=1)
        elif order != "random":
            raise ValueError(f"order must be 'random' or 'uncertain_first', got {order!r}")
        position = np.empty_like(ranks)
        np.put_along_axis(position, ranks, np.arange(k)[None, :].repeat(n, 0), axis=1)
        out: dict[str, list] = {"n_corrected": [], "auc": [], "accuracy": []}
        for j in range(k + 1):
            logits = self.intervene(activations, true_concepts, position < j)
            proba = torch.softmax(torch.as_tensor(logits), 1).numpy()
            out["n_corrected"].append(j)
            out["auc"].append(auc_score(labels, proba))
            out["accuracy"].append(float((proba.argmax(1) == labels).mean()))
        return out

    # ------------------------------------------------------------------ explanations
    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, true_concepts: np.ndarray | None = None,
                batch_size: int = 64) -> list[ConceptEvidence | Heatmap]:
        """Per case the concepts, what each adds to the explained class's logit, and a Grad-CAM of the top concept.

        Returns ``[ConceptEvidence, Heatmap]``. ``ConceptEvidence.predicted`` is in data units (probability for
        binary concepts), ``contribution[n, k] = w[target_n, k] * a_nk`` (the logit is their sum plus the bias).
        ``intercept[n]`` is the label head's bias of the explained class, so ``contribution[n].sum() + intercept[n]``
        is the explained logit. The heatmap (method ``concept_gradcam``) is Grad-CAM (Selvaraju et al. 2017) of the
        concept output with the largest contribution in absolute value (the concept that moved the logit most, for or
        against), on the backbone's last feature stage, upsampled to the input. When the
        backbone ends in global average pooling and one linear layer (every timm ResNet), Grad-CAM of a concept is
        exactly its class activation map, which :func:`~glasszoo.models._backbones.cam_forward` reads off the same
        forward pass that predicts the concepts: the whole explanation costs one forward pass and no backward pass.
        Other backbones get captum's ``LayerGradCam`` (a second forward and a backward pass).
        """
        targets = None if target is None else torch.as_tensor(np.asarray(target)).long()
        parts: dict[str, list] = {"acts": [], "tgt": [], "contrib": [], "maps": []}
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(x), batch_size):
                xb = as_tensor(x[start:start + batch_size], self.device)

                def select(outputs: torch.Tensor, start: int = start, n: int = len(xb)) -> torch.Tensor:
                    """The concept with the largest |contribution| per case; keeps activations and contributions."""
                    a = self.activations(outputs)
                    tgt = self.label_head(a).argmax(1) if targets is None else targets[start:start + n].to(a.device)
                    contrib = self.label_head.weight[tgt] * a  # [n, K]
                    for key, value in (("acts", a), ("tgt", tgt), ("contrib", contrib)):
                        parts[key].append(value.detach())
                    return contrib.abs().argmax(1)

                parts["maps"].append(gradcam_forward(self, self.net, xb, select, self.concept_outputs)[2])
        finally:
            self.train(was_training)
        k = self.n_concepts
        acts = torch.cat(parts["acts"]) if parts["acts"] else torch.zeros((0, k), device=self.device)
        tgt = torch.cat(parts["tgt"]) if parts["tgt"] else torch.zeros(0, dtype=torch.long)
        contrib = torch.cat(parts["contrib"]) if parts["contrib"] else torch.zeros((0, k))
        with torch.no_grad():
            predicted = self.to_data_units(acts).cpu().numpy()
        evidence = ConceptEvidence(concept_names=list(self.concept_names), predicted=predicted,
                                   contribution=contrib.cpu().numpy(), target=tgt.cpu().numpy(),
                                   true=None if true_concepts is None else np.asarray(true_concepts, np.float32),
                                   case_ids=case_ids,
                                   intercept=self.label_head.bias.detach()[tgt.to(self.device)].cpu().numpy())
        if true_concepts is not None and len(acts):
            evidence.corrected, evidence.corrected_proba = self.correct_worst(acts.cpu().numpy(), true_concepts)
        maps = torch.cat(parts["maps"]).cpu().numpy() if parts["maps"] else np.zeros((0, *self.img_size), np.float32)
        hm = Heatmap(maps=maps, method="concept_gradcam", target=tgt.cpu().numpy(), case_ids=case_ids)
        return [evidence, hm]

    def explain_global(self) -> GlobalExplanation:
        """The label head: per class, each concept's weight and the bias (zero weights: concepts not used)."""
        w = self.label_head.weight.detach().cpu().numpy()
        b = self.label_head.bias.detach().cpu().numpy()
        content = {"concepts": list(self.concept_names), "kinds": list(self.concept_kinds),
                   "weights": w.tolist(), "bias": b.tolist(), "mode": self.mode}
        lines = []
        for c in range(w.shape[0]):
            terms = " ".join(f"{w[c, k]:+.2f} x {name}" for k, name in enumerate(self.concept_names)
                             if abs(w[c, k]) > 1e-6)
            lines.append(f"logit[class {c}] = {b[c]:+.2f} {terms}")
        return GlobalExplanation(form="weights", content=content, text="\n".join(lines))

    def reading_load(self, x: np.ndarray | torch.Tensor) -> dict:
        """The concepts the label head weighs for the case's predicted class (|weight| >= 1e-3; mean over ``x``)."""
        pred = self.predict_proba(x).argmax(1)
        per_class = (self.label_head.weight.detach().abs() >= 1e-3).sum(dim=1).cpu().numpy()
        count = float(per_class[pred].mean()) if len(pred) else float(per_class.max())
        return {"count": count, "unit": "concepts",
                "definition": "predicted concepts the label head weighs for the case's predicted class"}

    def extra_metrics(self, test: Any, train: Any) -> dict:
        """Concept accuracy on the ``test`` cases and the intervention curves, under ``explanation.concepts``."""
        if not len(test.labels) or test.concepts is None:
            return {}
        acts = self.predict_concepts(test.images)
        true = np.asarray(test.concepts, dtype=np.float32)
        labels = np.asarray(test.labels)
        per: dict[str, dict] = {}
        accs = []
        for k, name in enumerate(self.concept_names):
            if self.concept_kinds[k] == "binary":
                y = true[:, k].astype(int)
                acc = float(((acts[:, k] >= 0.5) == y).mean())
                accs.append(acc)
                per[name] = {"kind": "binary", "accuracy": acc,
                             "auc": auc_score(y, np.stack([1 - acts[:, k], acts[:, k]], 1)),
                             "prevalence": float(y.mean())}
            else:
                pred = acts[:, k] * float(self.concept_scale[k]) + float(self.concept_center[k])
                per[name] = {"kind": "continuous", "rmse": float(np.sqrt(np.mean((pred - true[:, k]) ** 2))),
                             "accuracy_rounded": float((np.round(pred) == true[:, k]).mean())}
        curves = {o: self.intervention_curve(acts, true, labels, int(test.positive_class), order=o)
                  for o in ("random", "uncertain_first")}
        mean_acc = float(np.mean(accs)) if accs else float("nan")
        return {"explanation": {"concepts": {
            "mode": self.mode, "per_concept": per, "mean_concept_accuracy": mean_acc, "intervention": curves,
            "label_head_nonzero": int((self.label_head.weight.abs() > 1e-6).sum())}}}


class LabelHeadFit(Callback):
    """Sequential / independent CBM: fit the label head (sparse logistic regression) before each validation.

    Sequential: on the concept model's predicted activations of the training split (refitted every epoch, since the
    concept model changes), or of the model's ``head_fit_cases`` of them (``subsample``). Independent: on the true
    training concepts (fitted once).
    """

    def __init__(self, model: ConceptBottleneck, caseset: Any, subsample: bool = True) -> None:
        self.model = model
        self.caseset = caseset
        self.subsample = subsample
        self._fitted_on_truth = False
        self._fitted_at_step: int | None = None

    def rows(self) -> np.ndarray:
        """The training rows the sequential head is fitted on (sorted)."""
        train = self.caseset.indices("train")
        k = self.model.head_fit_cases
        if not self.subsample or k is None or k >= len(train):
            return train
        return np.sort(np.random.default_rng(0).choice(train, size=k, replace=False))

    def fit(self) -> None:
        m, cs = self.model, self.caseset
        train = cs.indices("train")
        if m.mode == "independent":
            if self._fitted_on_truth:
                return
            c = m.standardise(torch.as_tensor(np.asarray(cs.concepts)[train], dtype=torch.float32,
                                              device=m.device)).cpu()
            self._fitted_on_truth = True
        else:
            train = self.rows()
            c = torch.as_tensor(m.predict_concepts(cs.images[train]))
        y = torch.as_tensor(np.asarray(cs.labels)[train], dtype=torch.long)
        w, b = fit_sparse_linear(c, y, m.num_classes, m.label_l1)
        with torch.no_grad():
            m.label_head.weight.copy_(w)
            m.label_head.bias.copy_(b)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.fit()
            self._fitted_at_step = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run without validation (or with steps after the last one) still ends with a head fitted to its weights;
        # after a validation at the last step the head already is (the same fit of the same weights)
        if self._fitted_at_step != trainer.global_step:
            self.fit()
