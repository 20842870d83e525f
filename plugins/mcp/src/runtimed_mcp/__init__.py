"""runtimed-mcp: a Model Context Protocol server over the runtimed daemon (``runtimed mcp``)."""
