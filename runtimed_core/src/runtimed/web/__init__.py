"""The daemon's web pages: a small HTTP/WebSocket server (:mod:`runtimed.web.server`), the
notebook view model (:mod:`runtimed.web.view`) and the page itself (``static/``)."""
