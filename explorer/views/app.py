"""The whole app: one template, a navigation bar, and one page component per URL ``?page=``."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from importlib import import_module

import panel as pn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    key: str
    title: str
    module: str
    component: str
    blurb: str

    def build(self):
        return getattr(import_module(self.module), self.component)()


PAGES = [
    Page("lens", "Token entropy", "explorer.views.token_lens", "TokenEntropyLens",
         "Per-token entropy, surprisal, varentropy and rank at any temperature and decoding rule."),
    Page("temperature", "Temperature sensitivity", "explorer.views.temperature", "TemperatureSensitivity",
         "Sequence-level uncertainty across temperatures, TSU, semantic entropy, Inv-Entropy."),
    Page("diversity", "Diversity", "explorer.views.diversity", "DiversityExplorer",
         "Vendi score of any order, its spectrum, diffusion spectral entropy and DSMI."),
    Page("conformal", "Conformal sets", "explorer.views.conformal", "ConformalExplorer",
         "Split-conformal prediction sets with coverage diagnostics."),
    Page("training", "Training dynamics", "explorer.views.training", "TrainingDynamics",
         "Entropy and information of representations across training, the entropy law of RL runs, "
         "uncertainty against data size."),
]
PAGE_BY_KEY = {page.key: page for page in PAGES}


def navigation(current: str) -> pn.pane.HTML:
    links = "".join(
        f'<a class="nav-link{" active" if page.key == current else ""}" href="?page={page.key}" '
        f'title="{page.blurb}">{page.title}</a>'
        for page in PAGES
    )
    style = (
        "<style>.nav-link{display:block;padding:8px 12px;margin:2px 0;border-radius:6px;"
        "text-decoration:none;color:#1f2937;font-size:15px}.nav-link:hover{background:#e5e7eb}"
        ".nav-link.active{background:#0f766e;color:white;font-weight:600}</style>"
    )
    return pn.pane.HTML(style + f'<nav class="explorer-nav">{links}</nav>', sizing_mode="stretch_width")


def build_page(key: str):
    """The component for ``key``; a page that fails to build shows why instead of breaking the app."""
    page = PAGE_BY_KEY.get(key)
    if page is None:
        return pn.pane.Alert(f"Unknown page “{html.escape(key[:40])}”. Pick one on the left.", alert_type="warning")
    try:
        return page.build()
    except Exception as err:  # noqa: BLE001 - one broken page must not take the app down
        log.exception("page %s failed to build", key)
        return pn.pane.Alert(f"The page '{page.title}' failed to load: {type(err).__name__}: {err}",
                             alert_type="danger")


def sharing_header(component) -> list:
    """The header's "Share" and "Download report" buttons of a page, and who is signed in (when the
    server asks for a login)."""
    links = getattr(component, "links", None)
    parts = [links.controls()] if links is not None and links.active else []
    if pn.state.user:
        parts.append(pn.pane.HTML(f"<span class='login-name' style='color:white;font-size:14px'>Signed in as "
                                  f"<b>{html.escape(str(pn.state.user))}</b> · <a href='logout' style='color:white'>"
                                  "Log out</a></span>", margin=(12, 10)))
    return parts


def build_app(key: str | None = None):
    """The served app. ``key`` defaults to the URL's ``?page=`` and then to the first page."""
    if key is None:
        key = pn.state.session_args.get("page", [PAGES[0].key.encode()])[0].decode("utf-8", "replace") \
            if pn.state.session_args else PAGES[0].key
    title = PAGE_BY_KEY[key].title if key in PAGE_BY_KEY else "Entropy Explorer"
    component = build_page(key)
    links = getattr(component, "links", None)
    return pn.template.FastListTemplate(
        title=f"Entropy Explorer · {title}",
        sidebar=[navigation(key)],
        header=sharing_header(component),
        main=[pn.Column(links, component, sizing_mode="stretch_width") if links is not None else component],
        sidebar_width=230,
        accent="#0f766e",
        header_background="#0f766e",
    )
