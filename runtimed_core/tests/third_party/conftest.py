# The distribution here is installed by the tests into a temporary directory, never imported
# from the source tree: nothing in it is a test.
collect_ignore = ["runtimed_test_venv"]
