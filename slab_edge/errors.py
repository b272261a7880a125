"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class SlabEdgeError(Exception):
    """Bad input or an unmet precondition, with a message that names the problem."""


class InputError(SlabEdgeError, ValueError):
    """An input file, shape, dtype or argument is wrong."""


class CheckpointError(SlabEdgeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class BackendError(SlabEdgeError):
    """A backend (ONNX Runtime, TensorRT, CUDA) is missing or refuses the model."""
