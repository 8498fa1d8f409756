"""Method registry. One file per method; each registers a `MethodSpec` here.

A method is built from its validated options and a `TrainContext`; it satisfies the `Method` protocol in
`pipeline.methods.base`. Tests iterate over `REGISTRY`, so a new method is tested the day it lands.
"""

from pipeline.methods.base import (
    REGISTRY,
    Method,
    MethodOutput,
    MethodSpec,
    register,
    scores_frame,
    unregister,
)

# Importing a method module registers it.
from pipeline.methods import ce, cl, coteaching, dividemix, gal, gradsim, gss, jocor  # noqa: E402,F401  isort: skip

__all__ = [
    "REGISTRY",
    "Method",
    "MethodOutput",
    "MethodSpec",
    "register",
    "scores_frame",
    "unregister",
]
