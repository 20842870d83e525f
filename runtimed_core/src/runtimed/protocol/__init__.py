"""The runtimed wire protocol: over a Unix socket, a 5-byte preamble, then length-prefixed
frames; the first is a JSON handshake naming the channel (:mod:`.framing` and
:mod:`.messages` describe each part).

:mod:`.framing` and :mod:`.messages` are sans-IO (bytes and dicts in, bytes and
dicts out); :mod:`.transport` is the thin asyncio shell around them.
"""
