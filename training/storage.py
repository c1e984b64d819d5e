"""How a fitted tabular model is stored in a run, so that opening a run cannot run code from it.

A pickle runs whatever its author put in it when it is loaded, so a run folder received from someone else must not
be unpickled. Tabular models are stored with ``skops.io`` instead: a skops file lists the types it will build, and
:func:`load_tabular` builds only those that ``skops`` trusts by default (numpy, scipy, scikit-learn) or that the
run's config says the model holds (its registered class and its ``stored_types``). Anything else is refused before
any object is made. Runs written before this (``model.pkl``) are opened only with ``trust_run=True``
(``--trust-run`` on the command line).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from glasszoo.models.errors import DataError
from glasszoo.training.atomic import atomic_write

TRUST_HINT = ("a pickle can run any code when it is opened; open this run with --trust-run only if you trust whoever "
              "made it (or re-run its config)")


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def allowed_types(cls: type) -> set[str]:
    """The types a stored model of class ``cls`` may hold besides skops' defaults: ``cls`` and its ``stored_types``."""
    return {qualified_name(cls), *getattr(cls, "stored_types", ())}


def save_tabular(model: Any, path: Path) -> None:
    """Write ``model`` to ``path`` with ``skops.io`` (atomically)."""
    import skops.io as sio  # heavy: 1.6 s of the run's start otherwise, before the first model trains

    data = sio.dumps(model)
    atomic_write(path, lambda fh: fh.write(data), binary=True)


def load_tabular(path: Path, cls: type, pickle_path: Path | None = None, trust_run: bool = False) -> Any:
    """The model of class ``cls`` stored at ``path`` (skops), refusing any type it is not known to hold.

    When ``path`` is missing and ``pickle_path`` exists (a run written before skops storage, or a folder someone
    changed), the pickle is opened only with ``trust_run``; without it a :class:`DataError` names the file and the
    ``--trust-run`` flag, and nothing in the file is executed.
    """
    if path.is_file():
        import skops.io as sio  # heavy: only when a stored model is opened

        data = path.read_bytes()
        try:
            untrusted = set(sio.get_untrusted_types(data=data))
        except Exception as exc:  # a damaged or foreign file: say so, never a traceback
            raise DataError(f"{path}: not a readable skops file ({type(exc).__name__}: {exc})") from None
        foreign = sorted(untrusted - allowed_types(cls))
        if foreign:
            raise DataError(f"{path}: refused, it would build types that a {cls.__name__} does not hold: "
                            f"{', '.join(foreign)}; the file was changed or does not belong to this run")
        try:
            model = sio.loads(data, trusted=sorted(untrusted))
        except Exception as exc:
            raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(model, cls):
            raise DataError(f"{path}: holds a {type(model).__name__}, not the run's {cls.__name__}")
        return model
    if pickle_path is not None and pickle_path.is_file():
        if not trust_run:
            raise DataError(f"{pickle_path}: this run stores '{pickle_path.parent.name}' as a pickle (written by an "
                            f"older glasszoo, or changed by someone); {TRUST_HINT}")
        with open(pickle_path, "rb") as fh:
            return pickle.load(fh)  # the caller asked for it: --trust-run
    raise DataError(f"{path} not found: the run's fitted model of '{path.parent.name}' is missing")
