"""A jupyter_client kernel provisioner whose kernels come from the runtimed daemon.

Install a kernelspec that uses it with ``runtimed kernelspec install``; see
:mod:`runtimed_jupyter_provisioner.provisioner`.
"""
