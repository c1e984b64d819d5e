"""The ``medmnist`` source: a MedMNIST-format ``.npz`` with its official train/val/test splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glasszoo.models.errors import DataError
from glasszoo.training.caseset import SPLITS, CaseSet

# Class names of the MedMNIST v2 sets glasszoo ships configs for (from the MedMNIST v2 paper's label descriptions).
KNOWN_CLASS_NAMES: dict[str, list[str]] = {
    "breastmnist": ["malignant", "normal_or_benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "chestmnist": None,  # multi-label: not supported
}
DEFAULT_ROOT = Path(os.environ.get("GLASSZOO_DATA", Path.home() / ".medmnist"))
SIZES = (28, 64, 128, 224)  # MedMNIST v2 (28) and MedMNIST+ (Doerrich et al., Scientific Reports 2025)


def file_name(name: str, size: int) -> str:
    """The official file of MedMNIST set ``name`` at ``size`` px: ``<name>.npz`` at 28, ``<name>_<size>.npz``
    (MedMNIST+, the same keys) above."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch  # heavy: only when a file must be resized
    import torch.nn.functional as F  # heavy: as above

    t = torch.from_numpy(images)
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp_(0, 1).numpy()


def _download(name: str, root: Path, size: int | None) -> Path:
    """Fetch ``name`` with the ``medmnist`` package's own downloader into ``root``; clear error when impossible."""
    target = root / file_name(name, size or 28)
    where = (f"Put the official file at {target} (or set data.path to its location; data.root or the GLASSZOO_DATA "
             f"environment variable change the folder).")
    try:
        import medmnist  # optional: the 'download' extra
    except ImportError:
        raise DataError(f"MedMNIST data set '{name}' not found at {target}, and the 'medmnist' package that could "
                        f"download it is not installed (pip install 'glasszoo[download]'). {where}") from None
    info = medmnist.INFO.get(name)
    if info is None:
        raise DataError(f"'{name}' is not a MedMNIST data set; known: {sorted(medmnist.INFO)}")
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, info["python_class"])
    try:
        kwargs = {"split": "train", "download": True, "root": str(root)}
        if size not in (None, 28):
            kwargs["size"] = size
        cls(**kwargs)
    except Exception as exc:  # the downloader raises many kinds of network errors
        raise DataError(f"could not download MedMNIST data set '{name}' ({type(exc).__name__}: {exc}). "
                        f"No network? {where}") from None
    if not target.exists():
        raise DataError(f"the medmnist download finished but {target} is missing. {where}")
    return target


def load_medmnist(path: str | None = None, name: str | None = None, root: str | None = None,
                  img_size: int | None = None, class_names: list[str] | None = None, positive_class: int = 1,
                  download: bool = True, seed: int = 0, size: int | None = None) -> CaseSet:
    """Load a MedMNIST-format ``.npz`` keeping its official splits.

    Args:
        path: the ``.npz`` file with keys ``{train,val,test}_{images,labels}``. Optional when ``name`` is given.
        name: a MedMNIST flag (e.g. ``breastmnist``); with no ``path`` the file ``<root>/<name>.npz`` (28 px) or
            ``<root>/<name>_<size>.npz`` (MedMNIST+) is used and, when missing, downloaded with the ``medmnist``
            package (fails with a clear message offline).
        root: folder for named data sets (default ``$GLASSZOO_DATA`` or ``~/.medmnist``).
        img_size: resize to this side (bilinear, antialiased); ``None`` keeps the file's size.
        size: which official file a ``name`` reads: 28, 64, 128 or 224 px. Default: ``img_size`` when it is one of
            these (no resizing then), else 28.
        class_names: names of the classes; default the known MedMNIST names, else ``class_0``, ``class_1``, ...
        positive_class: index of the positive class for sensitivity/specificity.
        download: allow the download when a named set is missing.
        seed: unused (the splits are the official ones); accepted so every source takes the run's seed.

    Images are uint8 grey [N, H, W] or RGB [N, H, W, 3] and become float32 [N, C, H, W] / 255. Labels must be a
    single column (multi-label sets such as ChestMNIST are not supported).
    """
    del seed
    if path is None and name is None:
        raise DataError("the medmnist source needs data.path (an .npz file) or data.name (a MedMNIST flag)")
    if size is not None and (isinstance(size, bool) or size not in SIZES):
        raise DataError(f"data.size must be one of {list(SIZES)} (the MedMNIST / MedMNIST+ files), got {size!r}")
    if path is None:
        size = size or (img_size if img_size in SIZES else 28)
        base = Path(root).expanduser() if root else DEFAULT_ROOT
        file = base / file_name(name, size)
        if not file.exists():
            if not download:
                raise DataError(f"MedMNIST data set '{name}' at {size} px not found at {file} (download disabled)")
            file = _download(name, base, size)
    else:
        if size is not None:
            raise DataError("data.size chooses the file of a named set (data.name); with data.path give the file "
                            "itself")
        file = Path(path).expanduser()
        if not file.exists():
            raise DataError(f"MedMNIST file not found: {file}")
    try:
        npz = np.load(file, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    stem = name or file.stem.split("_")[0]
    images, labels, split = [], [], []
    with npz:
        for s in SPLITS:
            for key in (f"{s}_images", f"{s}_labels"):
                if key not in npz.files:
                    raise DataError(f"{file}: missing key '{key}' (found {sorted(npz.files)}); a MedMNIST file holds "
                                    f"{{train,val,test}}_{{images,labels}}")
            im, lab = npz[f"{s}_images"], npz[f"{s}_labels"]
            if lab.ndim == 2 and lab.shape[1] != 1:
                raise DataError(f"{file}: '{s}_labels' has shape {lab.shape}; multi-label data is not supported")
            lab = lab.reshape(-1)
            if len(im) != len(lab):
                raise DataError(f"{file}: '{s}_images' has {len(im)} images but '{s}_labels' has {len(lab)} labels")
            if im.ndim == 3:
                im = im[:, None]
            elif im.ndim == 4 and im.shape[-1] in (1, 3):
                im = np.moveaxis(im, -1, 1)
            else:
                raise DataError(f"{file}: '{s}_images' must be [N, H, W] or [N, H, W, 3], got {im.shape}")
            if np.issubdtype(im.dtype, np.integer):
                im = im.astype(np.float32) / 255.0
            else:
                im = im.astype(np.float32)
                if not np.isfinite(im).all():
                    raise DataError(f"{file}: '{s}_images' contains non-finite pixels")
            images.append(im)
            labels.append(lab.astype(np.int64))
            split += [s] * len(lab)
    shapes = {im.shape[1:] for im in images}
    if len(shapes) != 1:
        raise DataError(f"{file}: the splits have different image shapes {sorted(shapes)}")
    images_all = np.concatenate(images)
    if img_size is not None and images_all.shape[-1] != img_size:
        images_all = _resize(images_all, img_size)
    labels_all = np.concatenate(labels)
    k = int(labels_all.max()) + 1
    if class_names is None:
        class_names = KNOWN_CLASS_NAMES.get(stem) or [f"class_{i}" for i in range(max(k, 2))]
    if k > len(class_names):
        raise DataError(f"{file}: labels go up to {k - 1} but only {len(class_names)} class names: {class_names}")
    ids = [f"{s}-{i:05d}" for s in SPLITS for i in range(len(labels[SPLITS.index(s)]))]
    return CaseSet(images=images_all, labels=labels_all, class_names=list(class_names), case_ids=np.array(ids),
                   split=np.array(split), name=stem, positive_class=positive_class)
