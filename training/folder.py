"""The ``folder`` data source: a CSV manifest (one row per case) of image files read with SimpleITK.

Supported files are whatever SimpleITK reads: DICOM, NIfTI (a 2-D image or one slice of a 3-D volume), PNG, JPEG,
TIFF, MHA/MHD, NRRD. Example manifest (paths relative to the CSV's folder)::

    image,mask,label,split,asymmetry
    images/case 1.png,masks/case 1.png,benign,train,0
    images/case 2.dcm,,malignant,test,1
"""

from __future__ import annotations

import csv as csvlib
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training._imageio import (
    INTENSITY_MODES,
    RESIZE_MODES,
    fit_square,
    read_array,
    to_channels,
    to_unit_range,
)
from glasszoo.training.caseset import SPLITS, CaseSet
from glasszoo.training.duplicates import DEFAULT_THRESHOLD, duplicate_report, group_ids, near_duplicate_groups
from glasszoo.training.split import grouped_stratified_split, stratified_split

_MISSING = {"", "na", "nan", "n/a", "null", "none"}


def _is_missing(value: str) -> bool:
    return value.strip().lower() in _MISSING


def _as_float(value: str) -> float | None:
    """The finite number in ``value``, or None."""
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _as_int(value: str) -> int | None:
    """The integer in ``value`` (``"2"`` or ``"2.0"``), or None."""
    number = _as_float(value)
    return int(number) if number is not None and number == int(number) else None


def _read_manifest(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and rows of the CSV; each row is (spreadsheet row number, stripped cells). Blank lines are skipped.

    Duplicated column names are allowed here; a duplicated column that is used is rejected by :func:`_unique`."""
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csvlib.reader(fh)
            for cells in reader:
                cells = [c.strip() for c in cells]
                if not any(cells):
                    continue
                if header is None:
                    header = cells
                    continue
                row_no = reader.line_num
                if len(cells) > len(header) and not any(cells[len(header):]):
                    cells = cells[:len(header)]
                if len(cells) != len(header):
                    raise DataError(f"{path.name} row {row_no}: {len(cells)} fields but the header has "
                                    f"{len(header)} ({header})")
                rows.append((row_no, cells))
    except (UnicodeDecodeError, csvlib.Error) as err:
        raise DataError(f"cannot read CSV manifest {path}: {err}") from None
    if header is None:
        raise DataError(f"CSV manifest {path} is empty (no header row)")
    if not rows:
        raise DataError(f"CSV manifest {path} has a header but no rows")
    return header, rows


def _unique(name: str, what: str, header: list[str], path: Path) -> str:
    """``name`` when the header holds it once; a DataError naming the positions when it holds it more than once."""
    positions = [j + 1 for j, c in enumerate(header) if c == name]
    if len(positions) > 1:
        raise DataError(f"{what} appears {len(positions)} times in the header of {path} (columns "
                        f"{', '.join(map(str, positions))}), so it is ambiguous; rename the copies")
    return name


def _optional_column(name: str | None, default: str, key: str, header: list[str], path: Path) -> str | None:
    """Resolve an optional column: the default name may be absent (-> None), a name the user chose may not."""
    if name is None:
        return None
    if name in header:
        return _unique(name, f"column '{name}' (data.{key})", header, path)
    if name == default:
        return None
    raise DataError(f"column '{name}' (data.{key}) not found in {path}; columns present: {header}")


def _required_column(name: str, key: str, header: list[str], path: Path) -> str:
    if name not in header:
        raise DataError(f"column '{name}' (data.{key}) not found in {path}; columns present: {header}")
    return _unique(name, f"column '{name}' (data.{key})", header, path)


def _check_options(img_size: int, channels: int | str, intensity: str, slice_index: int | str, resize: str) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"data.img_size must be a positive integer, got {img_size!r}")
    if channels not in ("auto", 1, 3) or isinstance(channels, bool):
        raise ConfigError(f"data.channels must be 'auto', 1 or 3, got {channels!r}")
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"data.intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"data.resize must be one of {RESIZE_MODES}, got {resize!r}")
    if slice_index != "middle" and (isinstance(slice_index, bool) or not isinstance(slice_index, int)
                                    or slice_index < 0):
        raise ConfigError(f"data.slice_index must be 'middle' or a non-negative integer, got {slice_index!r}")


def _concept_columns(concept_columns: list[str] | str | None, header: list[str], roles: dict[str, str],
                     rows: list[tuple[int, list[str]]], path: Path) -> list[str]:
    """The concept column names: ``"auto"`` picks every numeric column without another role (``roles``: column ->
    its role, e.g. ``"image column (data.image_column)"``); unnamed columns such as a saved pandas index are skipped.
    An explicit list may not repeat a name nor name a column with another role; a used name must occur once in the
    header."""
    if concept_columns is None:
        return []
    if concept_columns == "auto":
        names = []
        for j, col in enumerate(header):
            if col in roles or not col or col.startswith("Unnamed:"):
                continue
            values = [cells[j] for _, cells in rows if not _is_missing(cells[j])]
            if values and all(_as_float(v) is not None for v in values):
                names.append(_unique(col, f"numeric column '{col}' (a concept under data.concept_columns: auto)",
                                     header, path))
        return names
    names = [concept_columns] if isinstance(concept_columns, str) else [str(c) for c in concept_columns]
    for i, col in enumerate(names):
        if col in names[:i]:
            raise DataError(f"concept column '{col}' is listed twice in data.concept_columns {names}")
        if col not in header:
            raise DataError(f"concept column '{col}' (data.concept_columns) not found in {path}; "
                            f"columns present: {header}")
        if col in roles:
            raise DataError(f"concept column '{col}' (data.concept_columns) is also the {roles[col]} in {path}; "
                            f"a column can have only one role")
        _unique(col, f"concept column '{col}' (data.concept_columns)", header, path)
    return names


def _labels(values: list[str], row_nos: list[int], class_names: list[str] | None,
            path: Path) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names from the label cells (names, or integer indices)."""
    for row_no, v in zip(row_nos, values):
        if not v:
            raise DataError(f"{path.name} row {row_no}: empty label")
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.class_names has duplicates: {names}")
        lookup = {n: i for i, n in enumerate(names)}
        labels = []
        for row_no, v in zip(row_nos, values):
            idx = lookup.get(v)
            if idx is None:
                as_int = _as_int(v)
                idx = as_int if as_int is not None and 0 <= as_int < len(names) else None
            if idx is None:
                raise DataError(f"{path.name} row {row_no}: label {v!r} is not one of class_names {names} "
                                f"(nor a class index 0..{len(names) - 1})")
            labels.append(idx)
        return np.asarray(labels, dtype=np.int64), names
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        found = sorted(set(ints))
        if found != list(range(len(found))):
            raise DataError(f"{path.name}: integer labels must be 0..K-1 when data.class_names is not given; found "
                            f"{found}; give class_names or relabel")
        return np.asarray(ints, dtype=np.int64), [str(i) for i in found]
    names = sorted(set(values))
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([lookup[v] for v in values], dtype=np.int64), names


def _positive_index(positive_class: int | str, names: list[str]) -> int:
    if isinstance(positive_class, str):
        if positive_class in names:
            return names.index(positive_class)
        as_int = _as_int(positive_class)
        if as_int is None:
            raise ConfigError(f"data.positive_class={positive_class!r} is not a class name {names} or index")
        return as_int
    return int(positive_class)


def _resolve(cell: str, base: Path) -> Path:
    p = Path(cell).expanduser()
    return p if p.is_absolute() else base / p


def _path_id(cell: str, base: Path) -> str:
    """The image path relative to the CSV folder (as written when relative; absolute paths outside stay absolute)."""
    p = Path(cell).expanduser()
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(base.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


_INNER_SUFFIXES = ("nii", "tar", "dcm", "dicom", "ima", "png", "jpg", "jpeg", "tif", "tiff", "mha", "nrrd")


def _strip_suffixes(path: str) -> str:
    """``path`` without its file-type suffixes (``.png``, ``.dcm``, ``.nii.gz``; a name like ``case 1.5`` keeps its
    number)."""
    head, _, name = path.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    if not (stem and 1 <= len(suffix) <= 5 and suffix.isalnum() and any(ch.isalpha() for ch in suffix)):
        return path
    inner, dot2, suffix2 = stem.rpartition(".")
    if inner and suffix2.lower() in _INNER_SUFFIXES:
        stem = inner
    return f"{head}/{stem}" if head else stem


def default_case_ids(cells: list[str], base: Path) -> list[str]:
    """Case ids made from the image paths: the path relative to the CSV folder, without the folders every image
    shares and without the file-type suffix (``images/case_0006.dcm`` -> ``case_0006``; BUSI's
    ``images/benign/benign (1).png`` -> ``benign/benign (1)``). Whatever part would make two ids equal is kept."""
    paths = [_path_id(c, base) for c in cells]
    parts = [p.split("/") for p in paths]
    common = 0
    while all(len(q) > common + 1 for q in parts) and len({q[common] for q in parts}) == 1:
        common += 1
    for ids in (["/".join(q[common:]) for q in parts], paths):
        stripped = [_strip_suffixes(i) for i in ids]
        for candidate in (stripped, ids):
            if len(set(candidate)) == len(candidate):
                return candidate
    return paths


def load_folder(csv: str, image_column: str = "image", label_column: str = "label", mask_column: str | None = "mask",
                split_column: str | None = "split", id_column: str | None = None,
                concept_columns: list[str] | str | None = "auto", class_names: list[str] | None = None,
                positive_class: int | str = 1, img_size: int = 64, channels: int | str = "auto",
                intensity: str = "dtype", slice_index: int | str = "middle", resize: str = "stretch",
                val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                name: str | None = None, group_column: str | None = None, group_duplicates: bool = False,
                duplicate_threshold: float = DEFAULT_THRESHOLD, subgroup: str | None = None) -> CaseSet:
    """Build a CaseSet from a CSV manifest with one row per case.

    Args:
        csv: path of the manifest; image and mask paths in it are relative to its folder (absolute ones are kept).
        image_column: column of image paths.
        label_column: column of labels: class names, or integer class indices.
        mask_column: column of lesion-mask paths (nonzero = lesion). If the default ``"mask"`` is absent there are
            no masks; an empty cell gives an all-zero mask.
        split_column: column of ``train``/``val``/``test``. If the default ``"split"`` is absent, a seeded stratified
            split is made with ``val_fraction``, ``test_fraction`` and ``seed``.
        id_column: column of unique case ids; default: the image path relative to the CSV folder, without the
            folders all images share and without the file suffix (:func:`default_case_ids`).
        concept_columns: ``"auto"`` (every numeric column not used above), a list of column names, or None. A
            listed column may not be listed twice nor be one of the columns above. Duplicated names in the header
            are allowed only for columns that are not used.
        class_names: class order; default: sorted unique label strings, or ``"0".."K-1"`` for integer labels.
        positive_class: index or name of the positive class.
        img_size: output side; images are resized to ``img_size`` x ``img_size`` (unless already that size).
        channels: ``"auto"`` (3 if any image is colour, else 1), 1 (colour -> luminance) or 3 (grey replicated).
        intensity: ``"dtype"`` (unsigned ints / dtype max; signed ints min-max per image; floats must be in [0, 1])
            or ``"minmax"`` (per-image min-max; constant image -> zeros).
        slice_index: slice of 3-D volumes to use: ``"middle"`` (``Z // 2``) or an index.
        resize: ``"stretch"`` (ignore the aspect ratio) or ``"pad"`` (zero-pad to a centred square first).
        val_fraction: fraction of each class for validation when there is no split column.
        test_fraction: fraction of each class for test when there is no split column.
        seed: seed of the stratified split.
        name: data set name; default: the name of the CSV's folder (``study/labels.csv`` -> ``study``).
        group_column: column of group ids (e.g. a patient id): a seeded split keeps each group in one split.
        group_duplicates: find near-duplicate images (:mod:`glasszoo.training.duplicates`) and keep each group of
            them in one split (joined with ``group_column`` when both are given).
        duplicate_threshold: correlation at or above which two images are near-duplicates.
        subgroup: a column whose values (read as text; an empty cell is ``"missing"``) are the cases' subgroups
            (scanner, site, sex, ...), for the subgroup audit (``glasszoo.evaluation.subgroups``); kept in
            ``meta["subgroup"]``; never a concept column.

    Raises:
        DataError: naming the file, row (header = row 1) and column at fault.
        ConfigError: for invalid option values.
    """
    _check_options(img_size, channels, intensity, slice_index, resize)
    path = Path(csv).expanduser()
    if not path.is_file():
        raise DataError(f"CSV manifest not found: {path}")
    base = path.parent
    name = name or path.resolve().parent.name or path.stem
    if not isinstance(group_duplicates, bool):
        raise ConfigError(f"data.group_duplicates must be true or false, got {group_duplicates!r}")
    header, rows = _read_manifest(path)
    image_column = _required_column(image_column, "image_column", header, path)
    label_column = _required_column(label_column, "label_column", header, path)
    mask_column = _optional_column(mask_column, "mask", "mask_column", header, path)
    split_column = _optional_column(split_column, "split", "split_column", header, path)
    if id_column is not None:
        id_column = _required_column(id_column, "id_column", header, path)
    if group_column is not None:
        group_column = _required_column(group_column, "group_column", header, path)
    if subgroup is not None:
        subgroup = _required_column(subgroup, "subgroup", header, path)
    if split_column is not None and (group_column is not None or group_duplicates):
        raise ConfigError(f"data.group_column / data.group_duplicates make the seeded split, but {path.name} has its "
                          f"own split column '{split_column}'; remove one of them")
    roles: dict[str, str] = {}
    for key, column in (("subgroup", subgroup), ("group_column", group_column), ("id_column", id_column),
                        ("split_column", split_column),
                        ("mask_column", mask_column),
                        ("label_column", label_column), ("image_column", image_column)):
        if column is not None:
            roles[column] = f"{key.split('_')[0]} column (data.{key})"
    concept_names = _concept_columns(concept_columns, header, roles, rows, path)
    col = {c: j for j, c in enumerate(header)}
    row_nos = [r for r, _ in rows]

    labels, names = _labels([cells[col[label_column]] for _, cells in rows], row_nos, class_names, path)
    positive = _positive_index(positive_class, names)

    if split_column is not None:
        split = []
        for row_no, cells in rows:
            value = cells[col[split_column]].lower()
            if value not in SPLITS:
                raise DataError(f"{path.name} row {row_no}: split value {cells[col[split_column]]!r} in column "
                                f"'{split_column}' must be one of {list(SPLITS)}")
            split.append(value)
        split = np.asarray(split, dtype=object)
    else:
        for c, cname in enumerate(names):
            count = int((labels == c).sum())
            if 0 < count < 3:
                raise DataError(f"{path.name}: class '{cname}' has only {count} case(s); a train/val/test split "
                                f"needs at least 3")
        split = None  # made once the images are read (near-duplicate groups need them)

    for row_no, cells in rows:
        if not cells[col[image_column]]:
            raise DataError(f"{path.name} row {row_no}: empty image path in column '{image_column}'")
    if id_column is not None:
        case_ids = [cells[col[id_column]] for _, cells in rows]
    else:
        case_ids = default_case_ids([cells[col[image_column]] for _, cells in rows], base)
    first_row: dict[str, int] = {}
    for row_no, cid in zip(row_nos, case_ids):
        if not cid:
            raise DataError(f"{path.name} row {row_no}: empty case id in column '{id_column}'")
        if cid in first_row:
            raise DataError(f"{path.name} row {row_no}: case id {cid!r} repeats row {first_row[cid]}")
        first_row[cid] = row_no

    concepts = None
    if concept_names:
        concepts = np.zeros((len(rows), len(concept_names)), dtype=np.float32)
        for i, (row_no, cells) in enumerate(rows):
            for k, cname in enumerate(concept_names):
                value = _as_float(cells[col[cname]])
                if value is None:
                    shown = "is missing" if _is_missing(cells[col[cname]]) else "is not a number"
                    raise DataError(f"{path.name} row {row_no}, column '{cname}': concept value "
                                    f"{cells[col[cname]]!r} {shown}")
                concepts[i, k] = value

    has_masks = mask_column is not None and any(cells[col[mask_column]] for _, cells in rows)
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for row_no, cells in tqdm(rows, desc=f"{name}: reading images", unit="img", disable=None, leave=False):
        where = f"{path.name} row {row_no}"
        img_path = _resolve(cells[col[image_column]], base)
        plane = read_array(img_path, where, "image", slice_index)
        x = to_unit_range(plane, intensity, img_path, where)
        if has_masks:
            mask_cell = cells[col[mask_column]]
            if mask_cell:
                mask_path = _resolve(mask_cell, base)
                m = read_array(mask_path, where, "mask", slice_index)
                if m.shape[:2] != plane.shape[:2]:
                    raise DataError(f"{where}: mask {mask_path} has shape {m.shape[:2]} but image {img_path} has "
                                    f"shape {plane.shape[:2]}; they must match")
                m = (m.max(axis=-1) if m.ndim == 3 else m) > 0
            else:
                m = np.zeros(plane.shape[:2], dtype=bool)
            masks.append(fit_square(m[None].astype(np.uint8), img_size, resize, is_mask=True)[0])
        images.append(fit_square(x, img_size, resize))

    n_chans = channels if channels != "auto" else (3 if any(x.shape[0] == 3 for x in images) else 1)
    stacked = np.stack([to_channels(x, n_chans) for x in images]).astype(np.float32, copy=False)
    dup_groups = near_duplicate_groups(stacked, duplicate_threshold) if group_duplicates else None
    if split is None:
        if group_duplicates or group_column is not None:
            extra = None if group_column is None else np.asarray([cells[col[group_column]] for _, cells in rows])
            split = grouped_stratified_split(labels, group_ids(len(rows), dup_groups or [], extra), val_fraction,
                                             test_fraction, seed)
        else:
            split = stratified_split(labels, val_fraction, test_fraction, seed)
    cs = CaseSet(
        images=stacked, labels=labels, class_names=names, case_ids=np.asarray(case_ids, dtype=object), split=split,
        masks=np.stack(masks).astype(np.uint8) if has_masks else None, concepts=concepts,
        concept_names=concept_names if concepts is not None else [], name=name, positive_class=positive,
    )
    if subgroup is not None:
        cs.meta["subgroup"] = np.asarray([cells[col[subgroup]].strip() or "missing" for _, cells in rows],
                                         dtype=object)
    if dup_groups is not None:
        cs.checks["duplicates"] = duplicate_report(cs, dup_groups, duplicate_threshold, grouped=True)
    return cs
