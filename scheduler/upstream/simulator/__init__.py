"""An upstream simulator speaking every adapter's API over real HTTP, with knobs.

``stationmaster simulate`` runs it; tests start it through
``tests/upstream/simsupport.py``; ``stationmaster dev`` runs it beside the
embedded servers. See :mod:`.knobs` for what can be turned and
:mod:`._control` for the ``/_sim`` control routes.
"""

from ._kling import default_secret as kling_default_secret
from .app import Simulator, open_simulator
from .knobs import KNOB_NAMES, Knobs, build_knobs, load_knobs_file, parse_assignments

__all__ = [
    "KNOB_NAMES",
    "Knobs",
    "Simulator",
    "build_knobs",
    "kling_default_secret",
    "load_knobs_file",
    "open_simulator",
    "parse_assignments",
]
