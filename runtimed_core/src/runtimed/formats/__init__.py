"""File formats, sans-IO: ``.ipynb`` to and from the documents (:mod:`runtimed.formats.ipynb`),
and nbformat's reading and writing, run in a child process (:mod:`runtimed.formats.nbfile`)."""
