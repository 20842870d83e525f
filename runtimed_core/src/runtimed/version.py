"""runtimed's version (read at call time: what a daemon reports, what a client compares)."""

__version__ = "0.1.0"
