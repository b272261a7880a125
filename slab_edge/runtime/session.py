"""One session contract for every backend: `Session` (the base every backend subclasses) and `TensorSpec`.

A session is a loaded model ready to run (`slab_edge.runtime.load` opens one; it lives in runtime/loader.py,
the one module that knows every backend, so the imports run session <- backends <- loader, no cycle):

    with load("model.onnx", threads=2) as session:
        outputs = session.run(batch)            # {"logits": np.ndarray}
        session.inputs, session.outputs          # [TensorSpec(name, shape, dtype)]
        session.metadata                         # decoded slab_edge.* metadata (preprocessing, labels, ...)

Backends subclass `Session` and implement `_run(feeds)`; input checking lives here so every backend
reports a wrong shape or dtype with the same message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.errors import BackendError, InputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    shape: one entry per dimension; an int for a fixed size, None for a dynamic one (batch, sequence).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {np.dtype(self.dtype).name}"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape)
        )

    def concrete_shape(self, batch: int = 1, fill: Mapping[int, int] | None = None) -> tuple[int, ...]:
        """A runnable shape: dim 0 -> `batch` when dynamic, other dynamic dims from `fill` {axis: size}."""
        out = []
        for axis, dim in enumerate(self.shape):
            if dim is not None:
                out.append(dim)
            elif axis == 0:
                out.append(batch)
            elif fill and axis in fill:
                out.append(fill[axis])
            else:
                raise InputError(f"input {self.describe()}: dynamic dimension {axis} needs a size")
        return tuple(out)


class Session:
    """Base class: a model loaded on one backend. Use `load(path)` to get one.

    Subclasses set `path`, `backend`, `inputs`, `outputs`, `metadata` and implement `_run` and `_close`.
    """

    backend: str = "?"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, Any] = {}
        self._closed = False

    # -- the contract -------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: {input name: array}, or one array when the model has a single input.

        Returns:
            {output name: array} in the order of `self.outputs`.

        Raises:
            InputError: missing/unknown input names, or a shape or dtype the model does not accept.
        """
        if self._closed:
            raise BackendError(f"{self.path.name}: session is closed")
        return self._run(self.check_inputs(inputs))

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Best effort only: an interpreter shutting down may have torn down the backend already.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<{type(self).__name__} {self.path.name} ({self.backend}): {ins} -> {outs}>"

    # -- helpers shared by every backend --------------------------------------------------------------
    @property
    def input(self) -> TensorSpec:
        """The single input (classification models have exactly one)."""
        if len(self.inputs) != 1:
            names = ", ".join(s.name for s in self.inputs)
            raise InputError(f"{self.path.name} has {len(self.inputs)} inputs ({names}); name one")
        return self.inputs[0]

    def check_inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Validate names, shapes and dtypes; return {name: C-contiguous array}. Never casts silently."""
        if isinstance(inputs, np.ndarray):
            inputs = {self.input.name: inputs}
        if not isinstance(inputs, Mapping):
            raise InputError(f"inputs must be a numpy array or a dict of them, got {type(inputs).__name__}")
        expected = {s.name: s for s in self.inputs}
        unknown = sorted(set(inputs) - set(expected))
        missing = sorted(set(expected) - set(inputs))
        if unknown or missing:
            raise InputError(
                f"{self.path.name}: inputs {sorted(inputs)} do not match the model's "
                f"{[s.describe() for s in self.inputs]}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        feeds = {}
        for name, spec in expected.items():
            array = inputs[name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != spec.dtype:
                raise InputError(
                    f"input {name!r}: expected dtype {np.dtype(spec.dtype).name}, got {array.dtype.name}"
                )
            if not spec.accepts_shape(array.shape):
                raise InputError(f"input {name!r}: expected shape {spec.describe()}, got {list(array.shape)}")
            feeds[name] = np.ascontiguousarray(array)
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _close(self) -> None:
        pass
