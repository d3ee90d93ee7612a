"""realm-listener: reactive listener motion from speaker audio.

One direction of flow: audio/text -> features -> model -> motion -> metrics, renders, robot.
"""

__version__ = "0.1.0"

from realm.errors import RealmInputError  # noqa: E402
from realm.motion import SPECS, MotionSpec, NormStats, get_spec  # noqa: E402

__all__ = ["RealmInputError", "MotionSpec", "NormStats", "SPECS", "get_spec", "__version__"]
