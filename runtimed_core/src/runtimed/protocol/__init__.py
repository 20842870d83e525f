"""The runtimed wire protocol (REFERENCE.md section 2).

:mod:`.framing` and :mod:`.messages` are sans-IO (bytes and dicts in, bytes and
dicts out); :mod:`.transport` is the thin asyncio shell around them.
"""
