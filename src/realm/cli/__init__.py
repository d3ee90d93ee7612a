"""``realm``: a thin command-line front end over the library, one module per area.

==========  ============================================================================
module      commands
==========  ============================================================================
common      the app, sub-apps, consoles, error wrapper, progress bars, shared options
data        ``realm data synth|inspect|features``, ``realm features``
train       ``realm train realm``, ``realm train <baseline>``
lm          ``realm asr``, ``realm train emotion|idvq|mmlm``, ``realm restyle``
generate    ``realm generate``, ``realm demo``
bench       ``realm bench``, ``realm eval``
render      ``realm render``, ``realm report``
embody      ``realm export``, ``realm embody fit-map|solve-flame|profile|sim``
serve       ``realm serve``, ``realm listen``
==========  ============================================================================

Each area registers its commands on :data:`realm.cli.common.app` when imported; this package
imports every area, so ``from realm.cli import app`` is the whole command line. Areas import only
:mod:`realm.cli.common` and the library, never each other.
"""

# ruff: noqa: I001  (the areas are imported in the order `realm --help` lists their commands)
import sys

from realm.cli.common import app

# the areas, in the order `realm --help` lists their commands; importing one registers its commands
from realm.cli import data  # noqa: E402,F401
from realm.cli import train  # noqa: E402,F401
from realm.cli import generate  # noqa: E402,F401
from realm.cli import bench  # noqa: E402,F401
from realm.cli import embody  # noqa: E402,F401
from realm.cli import lm  # noqa: E402,F401
from realm.cli import render  # noqa: E402,F401
from realm.cli import serve  # noqa: E402,F401


def run() -> None:  # pragma: no cover - entry point helper
    sys.exit(app())


__all__ = ["app", "run"]
