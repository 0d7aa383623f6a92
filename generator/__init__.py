"""devtest-router: registry snapshot to a checked, safely reloaded nginx config."""

__version__ = "0.1.0"
