"""CLI commands, one module each; see histo_core.cli."""
