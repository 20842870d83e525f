"""The daemon: one long-lived asyncio process that owns rooms, kernels and pools."""
