"""Embodiment: drive a robot face from listener motion (DESIGN section 11).

``profile`` (robot profiles), ``retarget`` (motion -> controls), ``safety`` (limits and
filters a robot can trust), ``export`` (Ameca JSONL, ROS 2 trajectories, Live Link Face CSV,
BVH). See docs/embodiment.md.
"""

from realm.embodiment.profile import Control, CoupledLimit, RobotProfile, load_profile

__all__ = ["Control", "CoupledLimit", "RobotProfile", "load_profile"]
