"""`panel serve apps/entropy_explorer.py`: the whole Entropy Explorer, one page per `?page=`."""

import panel as pn

from explorer.views import EXTENSIONS
from explorer.views.app import build_app

pn.extension(*EXTENSIONS, notifications=True, sizing_mode="stretch_width")
build_app().servable()
