"""Typed access to Zarr arrays: every read returns a plain numpy array."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray


def open_array(store: str, mode: Literal["r", "r+"] = "r") -> zarr.Array:
    return zarr.open_array(store, mode=mode)


def read(array: zarr.Array, *index: slice) -> NDArray[Any]:
    return np.asarray(array[index if len(index) > 1 else index[0]])


def member(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    assert isinstance(array, zarr.Array), name
    return array
