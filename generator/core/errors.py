"""What can go wrong. The exit code each ends a command with is in generator/cli/exit_codes.py."""

from __future__ import annotations


class Error(Exception):
    """A failure we expected and can explain in one line; the message says what to do."""


class UsageError(Error):
    """A flag, environment variable or config file setting is missing or wrong."""


class TemplateProblem(Error):
    """A template (bundled, or from template_dir) is missing, does not parse or fails to render,
    or does not print what the config needs (the routes and upstreams markers)."""


class SnapshotError(Error):
    """The snapshot is unusable as a whole: not parseable, not an object, no deployment key."""


class RefusedError(Error):
    """The rendered config was refused before anything changed: by the gate (the check, or
    nginx's test of the staged file) or by the safety threshold."""


class ApplyError(Error):
    """Writing, testing or reloading the installed config failed; the previous file is back."""


class SiteError(Error):
    """The config was applied (or was already in place), but the site's pages could not be
    written into site_dir: routing works, the index and 404 pages are not up to date."""


class InternalError(Error):
    """What we rendered is not what we meant: a bug in devtest-router, not in the input."""


class MetadataUnavailable(Error):
    """`register`: the ECS task metadata or EC2 instance metadata endpoint cannot be reached or
    read (here, not in register/discovery.py, so that the exit-code table imports no HTTP)."""
