"""`panel serve apps/entropy_explorer.py`: the whole Entropy Explorer, one page per `?page=`."""

import panel as pn

from explorer.views import EXTENSIONS
from explorer.views.app import build_app
from explorer.views.server import quiet_closed_connections

pn.extension(*EXTENSIONS, notifications=True, sizing_mode="stretch_width")
quiet_closed_connections()   # also under a plain `panel serve` (explorer serve does it at start)
build_app().servable()
