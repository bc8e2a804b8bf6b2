"""`panel serve --setup`: what `explorer serve` runs once in each server process before sessions
start (quiet logs for closed tabs; the default pages' results warmed in a background thread unless
ENTROPY_EXPLORER_WARM is empty)."""

import os

from explorer.views.server import WARM_STEPS, start

warm = os.environ.get("ENTROPY_EXPLORER_WARM", "all")
start(WARM_STEPS if warm == "all" else tuple(step for step in warm.split(",") if step))
