"""CLI commands that live in their own modules; each has register(app), called from kmemopt.cli."""
