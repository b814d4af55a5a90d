"""`broker-mcp`: an MCP server over the broker for one agent (official `mcp` SDK).

It uses only the agent-side Python client (`broker.client`) and the generated stubs,
never the broker's core or store, so it runs from the light install (`pip install .`)."""
