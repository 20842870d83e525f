"""The web pages: a small HTTP/WebSocket server (:mod:`runtimed.web.server`), the notebook
view model (:mod:`runtimed.web.view`), the page itself (``static/``), and the sidecar's
process (:mod:`runtimed.web.sidecar`)."""

from __future__ import annotations

import os


def open_in_browser(url: str) -> bool:
    """Open ``url`` in the user's browser, unless ``RUNTIMED_NO_BROWSER=1``; whether it did."""
    if os.environ.get("RUNTIMED_NO_BROWSER", "").lower() in ("1", "true", "yes"):
        return False
    import webbrowser  # only when a page is opened

    return webbrowser.open(url)
