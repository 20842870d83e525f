"""The two Automerge documents of a notebook room.

:mod:`.replica` is the only module that touches the automerge API;
:mod:`.notebook` and :mod:`.runtime_state` are the schemas (drawn in their module
docstrings) as plain functions over a :class:`~.replica.Replica`.
"""
