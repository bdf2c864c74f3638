"""The one error the training components raise when a run cannot go on."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unreachable judge, ...); the message says why."""
