"""realm-listener: reactive listener motion from speaker audio.

One direction of flow: audio/text -> features -> model -> motion -> metrics, renders, robot.
"""

__version__ = "0.1.0"

from realm.errors import RealmInputError  # noqa: E402
from realm.motion import SPECS, MotionSpec, NormStats, get_spec  # noqa: E402


def load(run):
    """Load a trained listener (run directory) ready to ``generate``; see :mod:`realm.checkpoint` and :mod:`realm.generate`."""
    from realm.checkpoint import load as _load

    return _load(run)


__all__ = ["load", "RealmInputError", "MotionSpec", "NormStats", "SPECS", "get_spec", "__version__"]
