"""Image helpers of the folder source: read one file with SimpleITK, scale it to [0, 1] and fit it to a square.

Every function takes ``where`` (e.g. ``"cases.csv row 7"``) and raises :class:`DataError` messages that start with it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from glasszoo.models.errors import DataError

INTENSITY_MODES = ("dtype", "minmax")
RESIZE_MODES = ("stretch", "pad")
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FLOAT_TOLERANCE = 1e-6


def _sitk_reason(err: Exception) -> str:
    """The short reason of a SimpleITK exception (its ``sitk::ERROR:`` line), without the C++ source location."""
    text = str(err).strip()
    marker = "sitk::ERROR:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy type


def nifti_has_non_finite(path: Path) -> bool:
    """True if a float NIfTI-1/2 file (.nii or .nii.gz) stores NaN or inf voxels.

    ITK's NIfTI reader silently replaces non-finite floats by 0, so the raw voxels are checked here instead.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    for order in ("<", ">"):
        size = int(np.frombuffer(raw[:4], f"{order}i4")[0])
        if size == 348:  # NIfTI-1
            dims = np.frombuffer(raw[40:56], f"{order}i2").astype(np.int64)
            code = int(np.frombuffer(raw[70:72], f"{order}i2")[0])
            offset = int(np.frombuffer(raw[108:112], f"{order}f4")[0])
            break
        if size == 540:  # NIfTI-2
            dims = np.frombuffer(raw[16:80], f"{order}i8")
            code = int(np.frombuffer(raw[12:14], f"{order}i2")[0])
            offset = int(np.frombuffer(raw[168:176], f"{order}i8")[0])
            break
    else:
        return False
    if code not in _NIFTI_FLOATS or not 1 <= dims[0] <= 7:
        return False
    count = int(np.prod(np.maximum(dims[1:1 + int(dims[0])], 1)))
    voxels = np.frombuffer(raw, f"{order}{_NIFTI_FLOATS[code]}", count=count, offset=offset)
    return not np.isfinite(voxels).all()


def read_array(path: Path, where: str, what: str = "image", slice_index: int | str = "middle") -> np.ndarray:
    """Read one file into a 2-D plane: [H, W] (grey) or [H, W, 3] (colour), in the file's own dtype.

    A 3-D volume [Z, H, W] gives the slice ``slice_index`` (``"middle"`` = ``Z // 2``); a volume with a single slice
    (e.g. a single-file DICOM, read as [1, H, W]) gives that slice whatever ``slice_index`` is. Alpha channels are
    dropped (RGBA -> RGB, grey+alpha -> grey).

    Args:
        path: the file to read.
        where: the manifest row, for error messages.
        what: ``"image"`` or ``"mask"``, for error messages.
        slice_index: which slice of a volume to take.
    """
    if path.is_dir():
        raise DataError(f"{where}: {what} path {path} is a folder; give one file per row (e.g. one DICOM file)")
    if not path.is_file():
        raise DataError(f"{where}: {what} file not found: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise DataError(f"{where}: cannot read {what} file {path}: {_sitk_reason(err)}") from None
    dim, ncomp = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(img)
    if dim == 3:
        depth = arr.shape[0]
        if depth == 1:
            arr = arr[0]
        else:
            z = depth // 2 if slice_index == "middle" else int(slice_index)
            if not 0 <= z < depth:
                raise DataError(f"{where}: slice_index={slice_index} is out of range for {what} file {path} "
                                f"with {depth} slices (valid: 0..{depth - 1} or 'middle')")
            arr = arr[z]
    elif dim != 2:
        raise DataError(f"{where}: {what} file {path} is {dim}-D; only 2-D images and 3-D volumes are supported")
    if ncomp == 1:
        return arr
    if ncomp == 2:
        return arr[..., 0]
    if ncomp in (3, 4):
        return arr[..., :3]
    raise DataError(f"{where}: {what} file {path} has {ncomp} components per pixel; expected 1 (grey), 3 (RGB) "
                    f"or 4 (RGBA)")


def to_unit_range(arr: np.ndarray, intensity: str, path: Path, where: str) -> np.ndarray:
    """Scale a plane from :func:`read_array` to float32 [C, H, W] in [0, 1] (C = 1 or 3).

    ``intensity="dtype"``: unsigned integers are divided by the maximum of their dtype (uint8 / 255,
    uint16 / 65535); signed integers (e.g. int16 CT) have no natural [0, 1] mapping, so they are min-max scaled per
    image; float images must already lie in [0, 1]. ``intensity="minmax"``: every image is scaled by its own min and
    max (over all channels, keeping colour balance); a constant image becomes zeros.
    """
    is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    if np.issubdtype(arr.dtype, np.floating) and (
            not np.isfinite(arr).all() or (is_nifti and nifti_has_non_finite(path))):
        raise DataError(f"{where}: image file {path} contains non-finite pixels (NaN or inf)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if intensity == "dtype" and np.issubdtype(arr.dtype, np.unsignedinteger):
        work = np.float32 if arr.dtype.itemsize <= 2 else np.float64
        out = arr.astype(work) / work(np.iinfo(arr.dtype).max)
    elif intensity == "dtype" and np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            raise DataError(f"{where}: image file {path} has float pixels in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
                            f"intensity='dtype' needs float images already in [0, 1]: use intensity='minmax'")
        out = np.clip(arr, 0.0, 1.0)
    else:  # "minmax", or signed integers under "dtype"
        work = arr.astype(np.float64)
        lo, hi = float(work.min()), float(work.max())
        out = (work - lo) / (hi - lo) if hi > lo else np.zeros_like(work)
    out = np.asarray(out, dtype=np.float32)
    return out[None] if out.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, -1, 0))


def fit_square(x: np.ndarray, size: int, resize: str, is_mask: bool = False) -> np.ndarray:
    """Bring [C, H, W] to [C, size, size].

    ``resize="stretch"`` resizes H and W independently; ``"pad"`` first zero-pads the shorter side (centred) to a
    square, keeping the aspect ratio. Images are resized bilinearly with antialiasing and clipped to [0, 1]; masks
    (``is_mask``) by nearest neighbour and binarised. An array already ``size`` x ``size`` is returned unchanged.
    """
    h, w = x.shape[-2:]
    if resize == "pad" and h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        padded = np.zeros((x.shape[0], side, side), dtype=x.dtype)
        padded[:, top:top + h, left:left + w] = x
        x, h, w = padded, side, side
    if (h, w) == (size, size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    if is_mask:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")[0].numpy()
        return (out > 0.5).astype(np.uint8)
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    return np.clip(out, 0.0, 1.0)


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert [C, H, W] to ``channels``: colour -> grey by luminance (0.299 R + 0.587 G + 0.114 B), grey -> RGB by
    replication."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return np.tensordot(LUMINANCE, x, axes=1)[None].astype(np.float32).clip(0.0, 1.0)
    return np.repeat(x, channels, axis=0)
