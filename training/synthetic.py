"""The embedded default data set: seeded synthetic phantom scans with ground-truth lesion concepts.

Every case is a 2-D grey phantom "scan": a dark field with a brighter elliptical "organ" filled with smooth random
tissue texture and mild noise, holding exactly one lesion. The lesion's appearance is driven by five binary
ground-truth concepts (``CaseSet.concepts`` columns, in this order):

* ``large`` -- base radius drawn from ``[0.15, 0.19] * img_size`` (else ``[0.09, 0.12] * img_size``).
* ``irregular_margin`` -- lobulated (3 harmonics of order 3-7, amplitude 0.08-0.12 each) and spiculated (5-9
  spikes, 50-80% of the radius long) border, else a smooth ellipse. The boundary never extends beyond
  ``0.27 * img_size`` from the lesion centre (so a corner marker always fits).
* ``heterogeneous`` -- strong mottled internal texture (std 0.10-0.14), else a nearly uniform interior (std 0.01).
* ``bright`` -- lesion mean 0.18-0.28 above the mean of a ring of surrounding tissue, else 0.06-0.16 below it.
* ``calcifications`` -- 2-6 small saturated dots (Gaussian sigma 0.75 px up to 64 px) inside the lesion core,
  else none.

Label rule (``class_names = ["benign", "malignant"]``, ``positive_class = 1``)::

    score = 2 * irregular_margin + heterogeneous + calcifications + large
    malignant (1) iff score >= 3, else benign (0)

``bright`` is deliberately *not* part of the rule (a visible but label-irrelevant concept). Sampling: the clean
labels come first, with exactly ``round(n_cases * class_balance)`` malignant cases (clipped to ``[3, n_cases - 3]``)
in random order; each case's four rule concepts are then drawn uniformly from the 8 of the 16 combinations that are
consistent with its label (so ``irregular_margin`` is 1 in 7/8 of malignant and 1/8 of benign cases, and ``large``,
``heterogeneous``, ``calcifications`` are 1 in 5/8 vs 3/8), and ``bright`` is a fair coin. Finally each label is
flipped independently with probability ``label_noise`` (``meta["label_clean"]`` keeps the pre-noise label).

Optional planted shortcut: with ``shortcut_rate`` set, a saturated square marker is burned into the top-left corner;
in train/val it is present with probability ``shortcut_rate`` for (noisy) label 1 and ``1 - shortcut_rate`` for
label 0, in test with probability 0.5 regardless of the label. Lesions never reach the marker region.

Optional scanner (a subgroup for the subgroup audit): with ``scanner_rate`` set, each case comes from scanner
``"A"`` or ``"B"`` (``meta["subgroup"]``), B with probability ``scanner_rate`` for label 1 and ``1 - scanner_rate``
for label 0, in every split (a site whose referrals are sicker): ``0.5`` makes the scanner independent of the label,
anything else a confounder. Scanner B's images have another intensity profile: ``v -> (1 - scanner_shift) * v +
scanner_shift`` (a brighter, flatter grey scale; the lesion and its contrast order are kept). The scanner is drawn
from its own generator, so turning it on changes no other array.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet, NpyWriter, cache_root, open_npy
from glasszoo.training.split import stratified_split

CONCEPT_NAMES = ["large", "irregular_margin", "heterogeneous", "bright", "calcifications"]
CLASS_NAMES = ["benign", "malignant"]

_SMALL_RADIUS = (0.09, 0.12)  # fractions of img_size
_LARGE_RADIUS = (0.15, 0.19)
_MAX_CENTER_OFFSET = 0.05  # lesion centre offset from the image centre, fraction of img_size
_ASPECT = (0.8, 1.0)  # minor/major axis ratio of the (area-preserving) lesion ellipse
_LOBE_AMP = (0.08, 0.12)  # amplitude of each of the 3 lobulation harmonics (irregular margin)
_SPIKE_AMP = (0.5, 0.8)  # relative spike length (irregular margin)
_MAX_BOUNDARY = 0.27  # the lesion boundary radius is capped at this fraction of img_size (spikes included)
_MAX_DOTS = 6
_PIXELS_PER_CHUNK = 1 << 20  # bounds the memory of the vectorised renderer
# images of at least this many bytes are rendered to a memory-mapped file in the cache instead of into memory
# (override with $GLASSZOO_MEMMAP_MIN_BYTES; data.memmap: true/false forces either way)
MEMMAP_MIN_BYTES = 128 << 20


def risk_score(concepts: np.ndarray) -> np.ndarray:
    """The malignancy risk score ``2*irregular_margin + heterogeneous + calcifications + large`` per case.

    Args:
        concepts: [N, 5] concepts in the order of :data:`CONCEPT_NAMES`.

    Returns:
        int64 [N] scores in 0..5; a case is malignant iff its score is >= 3.
    """
    c = np.asarray(concepts).astype(np.int64)
    return 2 * c[:, 1] + c[:, 2] + c[:, 4] + c[:, 0]


def marker_offset(img_size: int) -> int:
    """Distance in pixels of the shortcut marker from the top and left image edges."""
    return max(1, img_size // 32)


def max_shortcut_size(img_size: int) -> int:
    """The largest marker side that provably stays >= 1 px clear of every possible lesion (and its soft edge)."""
    s = float(img_size)
    boundary = min(_LARGE_RADIUS[1] * (1.0 + 3 * _LOBE_AMP[1] + _SPIKE_AMP[1]), _MAX_BOUNDARY)
    reach = _MAX_CENTER_OFFSET * s + 0.5 + boundary * s / np.sqrt(_ASPECT[0])
    return int(np.floor((s - 1.0) / 2.0 - marker_offset(img_size) + 1.0 - (reach + 1.5) / np.sqrt(2.0)))


def _check_args(n_cases: int, img_size: int, class_balance: float, label_noise: float, shortcut_rate: float | None,
                shortcut_size: int, channels: int, seed: int) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    def is_real(v: object) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(float(v))

    if not is_int(n_cases) or n_cases < 30:
        raise ConfigError(f"data.n_cases must be an integer >= 30, got {n_cases!r}")
    if not is_int(img_size) or img_size < 16:
        raise ConfigError(f"data.img_size must be an integer >= 16, got {img_size!r}")
    if not is_real(class_balance) or not 0.0 < class_balance < 1.0:
        raise ConfigError(f"data.class_balance must lie in (0, 1), got {class_balance!r}")
    if not is_real(label_noise) or not 0.0 <= label_noise < 0.5:
        raise ConfigError(f"data.label_noise must lie in [0, 0.5), got {label_noise!r}")
    if shortcut_rate is not None and (not is_real(shortcut_rate) or not 0.5 <= shortcut_rate <= 1.0):
        raise ConfigError(f"data.shortcut_rate must be null or lie in [0.5, 1], got {shortcut_rate!r}")
    if not is_int(shortcut_size) or shortcut_size < 1:
        raise ConfigError(f"data.shortcut_size must be an integer >= 1, got {shortcut_size!r}")
    if shortcut_rate is not None and shortcut_size > max_shortcut_size(img_size):
        raise ConfigError(f"data.shortcut_size must be <= {max_shortcut_size(img_size)} for img_size={img_size} "
                          f"(the marker must stay clear of the lesion), got {shortcut_size}")
    if not is_int(channels) or channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {channels!r}")
    if not is_int(seed):
        raise ConfigError(f"seed must be an integer, got {seed!r}")


def _sample_concepts(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Draw [N, 5] concepts: the rule concepts uniformly among the label-consistent combos, ``bright`` a coin."""
    combos = np.array(list(itertools.product((0, 1), repeat=4)), dtype=np.int64)  # (large, irregular, het, calc)
    full = np.zeros((len(combos), 5), dtype=np.int64)
    full[:, [0, 1, 2, 4]] = combos
    malignant = risk_score(full) >= 3
    by_label = [combos[~malignant], combos[malignant]]  # 8 combos each
    pick = rng.integers(0, 8, size=len(labels))
    out = np.zeros((len(labels), 5), dtype=np.int64)
    for lab in (0, 1):
        rows = labels == lab
        out[np.ix_(rows, [0, 1, 2, 4])] = by_label[lab][pick[rows]]
    out[:, 3] = rng.random(len(labels)) < 0.5
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation per image: float32 [B, H, W]."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(0.0, sigma, sigma), mode="reflect")
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
    return field


def _render_chunk(rng: np.random.Generator, p: dict[str, np.ndarray], img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one chunk of cases from their per-case parameters ``p``: (images [B,H,W] float32, masks [B,H,W] bool)."""
    b, s = len(p["radius"]), img_size
    rows = np.arange(s, dtype=np.float32)[None, :, None]
    cols = np.arange(s, dtype=np.float32)[None, None, :]

    def col(name: str) -> np.ndarray:
        return p[name].astype(np.float32)[:, None, None]

    # --- organ: soft-edged rotated ellipse, brighter than the outside, filled with smooth texture
    dy, dx = rows - col("organ_row"), cols - col("organ_col")
    ca, sa = np.cos(col("organ_angle")), np.sin(col("organ_angle"))
    d = np.sqrt(((ca * dx + sa * dy) / col("organ_a")) ** 2 + ((-sa * dx + ca * dy) / col("organ_b")) ** 2)
    organ = 1.0 / (1.0 + np.exp((d - 1.0) / 0.03))
    coarse = _smooth_noise(rng, (b, s, s), s / 16.0)
    fine = _smooth_noise(rng, (b, s, s), max(0.7, s / 64.0))
    bg = col("outside_level") + organ * (col("organ_level") - col("outside_level"))
    bg += (0.015 + 0.04 * organ) * coarse + (0.008 + 0.015 * organ) * fine

    # --- lesion: polar boundary r_b(theta) in coordinates stretched to an area-preserving ellipse
    dy, dx = rows - col("lesion_row"), cols - col("lesion_col")
    ca, sa = np.cos(col("lesion_angle")), np.sin(col("lesion_angle"))
    root_e = np.sqrt(col("lesion_aspect"))
    u = (ca * dx + sa * dy) * root_e
    v = (-sa * dx + ca * dy) / root_e
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    pert = np.zeros((b, s, s), dtype=np.float32)
    for k in range(p["harm_order"].shape[1]):
        pert += p["harm_amp"][:, k, None, None].astype(np.float32) * np.cos(
            p["harm_order"][:, k, None, None].astype(np.float32) * theta + p["harm_phase"][:, k, None, None])
    spikes = (0.5 + 0.5 * np.cos(col("spike_count") * theta + col("spike_phase"))) ** 6
    pert += col("spike_amp") * spikes
    r_b = np.minimum(col("radius") * (1.0 + pert), _MAX_BOUNDARY * s)
    inside = r_b - rho  # >= 0 inside the lesion, in (stretched) pixels
    masks = inside >= 0.0
    weight = np.clip(inside + 0.5, 0.0, 1.0)
    ring_width = max(2.0, 0.05 * s)
    ring = (inside < 0.0) & (inside >= -ring_width)
    ring_mean = (bg * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)

    texture = _smooth_noise(rng, (b, s, s), max(0.6, s / 56.0))
    texture -= ((texture * masks).sum(axis=(1, 2)) / np.maximum(masks.sum(axis=(1, 2)), 1))[:, None, None]
    lesion = (ring_mean + p["delta"].astype(np.float32))[:, None, None] + col("texture_amp") * texture
    img = bg * (1.0 - weight) + lesion * weight

    # --- calcifications: tiny saturated dots centred on pixels inside the lesion core
    calc = np.flatnonzero(p["n_dots"] > 0)
    if len(calc):
        dot_sigma = 0.75 * max(1.0, s / 64.0)
        dr = p["dot_row"][calc][:, :, None, None].astype(np.float32)
        dc = p["dot_col"][calc][:, :, None, None].astype(np.float32)
        live = (np.arange(_MAX_DOTS)[None, :] < p["n_dots"][calc][:, None]).astype(np.float32)[:, :, None, None]
        blobs = live * np.exp(-((rows[:, None] - dr) ** 2 + (cols[:, None] - dc) ** 2) / (2.0 * dot_sigma ** 2))
        blob = blobs.max(axis=1)
        img[calc] += (1.0 - img[calc]) * blob

    img += 0.012 * rng.standard_normal((b, s, s), dtype=np.float32)
    return img, masks


def _lesion_params(rng: np.random.Generator, concepts: np.ndarray, img_size: int) -> dict[str, np.ndarray]:
    """Draw every per-case geometry and intensity parameter (vectorised over cases)."""
    n = len(concepts)
    large, irregular, het, bright, calc = (concepts[:, j].astype(bool) for j in range(5))
    s = float(img_size)
    centre = (s - 1.0) / 2.0
    p: dict[str, np.ndarray] = {}
    # organ
    p["organ_row"] = centre + rng.uniform(-0.03, 0.03, n) * s
    p["organ_col"] = centre + rng.uniform(-0.03, 0.03, n) * s
    p["organ_a"] = rng.uniform(0.40, 0.46, n) * s
    p["organ_b"] = rng.uniform(0.33, 0.40, n) * s
    p["organ_angle"] = rng.uniform(0.0, np.pi, n)
    p["organ_level"] = rng.uniform(0.36, 0.44, n)
    p["outside_level"] = rng.uniform(0.06, 0.12, n)
    # lesion placement and size (centres on pixel centres so that every mask is non-empty)
    off_r = _MAX_CENTER_OFFSET * s * np.sqrt(rng.random(n))
    off_a = rng.uniform(0.0, 2.0 * np.pi, n)
    p["lesion_row"] = np.round(centre + off_r * np.sin(off_a))
    p["lesion_col"] = np.round(centre + off_r * np.cos(off_a))
    small_r = rng.uniform(*_SMALL_RADIUS, n)
    large_r = rng.uniform(*_LARGE_RADIUS, n)
    p["radius"] = np.where(large, large_r, small_r) * s
    p["lesion_angle"] = rng.uniform(0.0, np.pi, n)
    p["lesion_aspect"] = rng.uniform(*_ASPECT, n)
    # margin: 3 lobulation harmonics + spikes when irregular, one faint 2nd harmonic when regular
    p["harm_order"] = np.where(irregular[:, None], rng.integers(3, 8, (n, 3)), 2)
    p["harm_amp"] = np.where(irregular[:, None], rng.uniform(*_LOBE_AMP, (n, 3)), [0.02, 0.0, 0.0])
    p["harm_phase"] = rng.uniform(0.0, 2.0 * np.pi, (n, 3)).astype(np.float32)
    p["spike_count"] = rng.integers(5, 10, n)
    p["spike_phase"] = rng.uniform(0.0, 2.0 * np.pi, n)
    p["spike_amp"] = np.where(irregular, rng.uniform(*_SPIKE_AMP, n), 0.0)
    # interior
    p["texture_amp"] = np.where(het, rng.uniform(0.10, 0.14, n), 0.01)
    p["delta"] = np.where(bright, rng.uniform(0.18, 0.28, n), -rng.uniform(0.06, 0.16, n))
    # calcifications: dots within 0.5 * radius (stretched) of the centre, always inside the lesion
    n_dots = np.where(large, rng.integers(3, _MAX_DOTS + 1, n), rng.integers(2, 5, n))
    p["n_dots"] = np.where(calc, n_dots, 0)
    dot_r = 0.5 * p["radius"][:, None] * np.sqrt(rng.random((n, _MAX_DOTS)))
    dot_a = rng.uniform(0.0, 2.0 * np.pi, (n, _MAX_DOTS))
    root_e = np.sqrt(p["lesion_aspect"])[:, None]
    u, v = dot_r * np.cos(dot_a) / root_e, dot_r * np.sin(dot_a) * root_e
    ca, sa = np.cos(p["lesion_angle"])[:, None], np.sin(p["lesion_angle"])[:, None]
    p["dot_row"] = np.round(p["lesion_row"][:, None] + sa * u + ca * v)
    p["dot_col"] = np.round(p["lesion_col"][:, None] + ca * u - sa * v)
    return p


def _memmap_min_bytes() -> int:
    env = os.environ.get("GLASSZOO_MEMMAP_MIN_BYTES", "").strip()
    if not env:
        return MEMMAP_MIN_BYTES
    try:
        return int(env)
    except ValueError:
        raise ConfigError(f"$GLASSZOO_MEMMAP_MIN_BYTES must be a number of bytes, got {env!r}") from None


def _render_all(rng: np.random.Generator, params: dict[str, np.ndarray], s: int, marker: np.ndarray,
                shortcut_size: int, channels: int, scanner_b: np.ndarray | None = None, scanner_shift: float = 0.0):
    """Yield ``(rows, images [B, C, s, s] float32, masks [B, s, s] uint8)`` chunk by chunk, in order, with the
    shortcut marker burnt in, scanner B's intensity profile applied and values clipped to [0, 1]."""
    n = len(marker)
    chunk = max(1, _PIXELS_PER_CHUNK // (s * s))
    offset = marker_offset(s)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img, msk = _render_chunk(rng, {k: v[sl] for k, v in params.items()}, s)
        img[marker[sl].astype(bool), offset:offset + shortcut_size, offset:offset + shortcut_size] = 1.0
        np.clip(img, 0.0, 1.0, out=img)
        if scanner_b is not None:
            b = scanner_b[sl]
            img[b] = (1.0 - scanner_shift) * img[b] + scanner_shift
        yield sl, np.repeat(img[:, None], channels, axis=1), msk.astype(np.uint8)


def _cache_key(**args) -> str:
    """Every generation argument plus a digest of this module's code (a changed renderer never reads old files)."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    blob = json.dumps({"args": args, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cached_arrays(key: str, shape: tuple[int, int, int, int], chunks) -> tuple[np.memmap, np.memmap]:
    """The memory-mapped (images, masks) of cache entry ``key``, rendered from ``chunks`` first if absent."""
    folder = cache_root() / "synthetic"
    img_path, mask_path = folder / f"{key}-images.npy", folder / f"{key}-masks.npy"
    try:
        if img_path.exists() and mask_path.exists():
            images, masks = open_npy(img_path), open_npy(mask_path)
            if images.shape == shape and masks.shape == (shape[0], *shape[2:]):
                return images, masks
    except (OSError, ValueError):
        pass  # unreadable or torn: render again
    img_w = NpyWriter(img_path, shape, np.float32)
    mask_w = NpyWriter(mask_path, (shape[0], *shape[2:]), np.uint8)
    try:
        for _, img, msk in chunks:
            img_w.write(img)
            mask_w.write(msk)
    except BaseException:
        img_w.abort()
        mask_w.abort()
        raise
    mask_w.close()
    img_w.close()
    return open_npy(img_path), open_npy(mask_path)


def make_synthetic(n_cases: int = 1200, img_size: int = 64, class_balance: float = 0.5, label_noise: float = 0.03,
                   shortcut_rate: float | None = None, shortcut_size: int = 4, channels: int = 1,
                   val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                   memmap: bool | None = None, scanner_rate: float | None = None,
                   scanner_shift: float = 0.2) -> CaseSet:
    """Generate the synthetic phantom CaseSet (deterministic: the same arguments give byte-identical arrays).

    Label rule: ``score = 2*irregular_margin + heterogeneous + calcifications + large``; malignant (1) iff
    ``score >= 3``, else benign (0); ``bright`` does not enter the rule. Exactly ``round(n_cases * class_balance)``
    clean labels are malignant; concepts are drawn uniformly among the combinations consistent with the label; then
    each label flips with probability ``label_noise``. See the module docstring for the concept appearance.

    Args:
        n_cases: number of cases (>= 30).
        img_size: side of the square images in pixels (>= 16).
        class_balance: fraction of malignant cases before label noise, in (0, 1).
        label_noise: probability of flipping each label, in [0, 0.5).
        shortcut_rate: None for no shortcut; else in [0.5, 1], the probability in train/val that the corner marker
            is present for label 1 (and absent for label 0). In test the marker is a fair coin.
        shortcut_size: side of the square marker in pixels, drawn ``max(1, img_size // 32)`` px from the top and
            left edges; at most :func:`max_shortcut_size` (13 at 64 px, 5 at 28 px) when ``shortcut_rate`` is set.
        channels: 1 (grey) or 3 (the grey image replicated to RGB).
        val_fraction: fraction of each class in the validation split.
        test_fraction: fraction of each class in the test split.
        seed: seed of ``numpy.random.default_rng`` and of the stratified split.
        memmap: where the images and masks live. ``None`` (default): in memory below :data:`MEMMAP_MIN_BYTES` of
            images (128 MiB, e.g. 8,192 cases of 64 px), else rendered slice by slice into ``.npy`` files in the cache
            (``$GLASSZOO_CACHE/synthetic`` or ``~/.cache/glasszoo/synthetic``; keyed by every argument above and
            the generator's code) and memory-mapped, so a large set is never held in memory whole and a second run
            with the same arguments reads the cache instead of rendering. ``True``/``False`` force either way.
            Both give the same arrays.
        scanner_rate: None for no scanner; else in [0, 1], the probability that a label-1 case comes from scanner
            B (``1 - scanner_rate`` for label 0): 0.5 = independent of the label (module docstring).
        scanner_shift: scanner B's intensity profile ``(1 - shift) * v + shift``, shift in [0, 0.5].

    Returns:
        A CaseSet with images float32 [N, C, H, W] in [0, 1], lesion masks, the 5 concepts and meta arrays
        ``radius``, ``lesion_center_row``, ``lesion_center_col``, ``shortcut_marker`` and ``label_clean``.

    Raises:
        ConfigError: an argument is out of range (the message names it).
    """
    _check_args(n_cases, img_size, class_balance, label_noise, shortcut_rate, shortcut_size, channels, seed)
    if scanner_rate is not None and (isinstance(scanner_rate, bool) or not isinstance(scanner_rate, Real)
                                     or not 0.0 <= float(scanner_rate) <= 1.0):
        raise ConfigError(f"data.scanner_rate must be null or lie in [0, 1], got {scanner_rate!r}")
    if isinstance(scanner_shift, bool) or not isinstance(scanner_shift, Real) or not 0.0 <= scanner_shift <= 0.5:
        raise ConfigError(f"data.scanner_shift must lie in [0, 0.5], got {scanner_shift!r}")
    if memmap is not None and not isinstance(memmap, bool):
        raise ConfigError(f"data.memmap must be true, false or null (automatic), got {memmap!r}")
    n, s = int(n_cases), int(img_size)
    rng = np.random.default_rng(seed)

    # labels, concepts, label noise, split
    n_pos = int(np.clip(round(n * class_balance), 3, n - 3))
    label_clean = np.zeros(n, dtype=np.int64)
    label_clean[rng.permutation(n)[:n_pos]] = 1
    concepts = _sample_concepts(rng, label_clean)
    flip = rng.random(n) < label_noise
    labels = np.where(flip, 1 - label_clean, label_clean)
    split = stratified_split(labels, val_fraction, test_fraction, seed)

    # planted shortcut marker
    marker = np.zeros(n, dtype=np.int64)
    coin = rng.random(n)
    if shortcut_rate is not None:
        p_marker = np.where(labels == 1, shortcut_rate, 1.0 - shortcut_rate)
        p_marker = np.where(split == "test", 0.5, p_marker)
        marker = (coin < p_marker).astype(np.int64)

    # the scanner, from a generator of its own (the other arrays do not depend on whether it is on)
    scanner_b = None
    if scanner_rate is not None:
        p_b = np.where(labels == 1, float(scanner_rate), 1.0 - float(scanner_rate))
        scanner_b = np.random.default_rng([int(seed), 20]).random(n) < p_b

    # render in chunks of bounded memory (the chunk size depends only on img_size, so output is seed-deterministic)
    params = _lesion_params(rng, concepts, s)
    shape = (n, int(channels), s, s)
    if memmap is None:
        memmap = 4 * int(np.prod(shape)) >= _memmap_min_bytes()
    chunks = _render_all(rng, params, s, marker, shortcut_size, int(channels), scanner_b, float(scanner_shift))
    if memmap:
        scanner = {} if scanner_rate is None else {"scanner_rate": scanner_rate, "scanner_shift": scanner_shift}
        key = _cache_key(n_cases=n, img_size=s, class_balance=class_balance, label_noise=label_noise,
                         shortcut_rate=shortcut_rate, shortcut_size=shortcut_size, channels=channels,
                         val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, **scanner)
        images, masks = _cached_arrays(key, shape, chunks)
    else:
        images = np.empty(shape, dtype=np.float32)
        masks = np.empty((n, s, s), dtype=np.uint8)
        for sl, img, msk in chunks:
            images[sl], masks[sl] = img, msk

    meta = {
        "radius": params["radius"].astype(np.float64),
        "lesion_center_row": params["lesion_row"].astype(np.int64),
        "lesion_center_col": params["lesion_col"].astype(np.int64),
        "shortcut_marker": marker,
        "label_clean": label_clean,
    }
    if scanner_b is not None:
        meta["subgroup"] = np.where(scanner_b, "scanner B", "scanner A").astype(object)
    return CaseSet(
        images=images,
        labels=labels,
        class_names=list(CLASS_NAMES),
        case_ids=np.array([f"syn-{i:05d}" for i in range(n)], dtype=object),
        split=split,
        masks=masks,
        concepts=concepts.astype(np.float32),
        concept_names=list(CONCEPT_NAMES),
        meta=meta,
        name="synthetic",
        positive_class=1,
    )
