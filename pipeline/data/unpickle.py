"""A restricted unpickler for CIFAR python batches: only numpy array reconstruction is allowed."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("numpy._core.numeric", "_frombuffer"),  # numpy arrays pickled with protocol 5
    ("numpy.core.numeric", "_frombuffer"),
    ("__builtin__", "bytes"),  # empty bytes (or an empty array's buffer) in protocols 0-2
    ("builtins", "bytes"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy helpers a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")


def load_pickle(path: str | Path) -> Any:
    """Load a pickle file through `RestrictedUnpickler` (bytes keys kept as bytes, as in CIFAR).

    Raises:
        DataError: naming the file when it is missing, corrupt or asks for a forbidden global.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused to unpickle: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
