"""A third-party runtimed plugin, for the tests: the ``venv`` env family and a failing sink.

It lives outside the workspace and is installed only into the daemons of the
tests that ask for it (``runtimed_core/tests/test_third_party.py``).
"""
