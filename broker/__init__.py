"""Payment broker for AI agents that buy GPU compute."""
