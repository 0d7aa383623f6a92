"""-v's account of the settings: each one's value and where it came from.

config.resolve merges the layers (a flag, the environment variable, the config file, the
default: the first that has the setting wins) and keeps only the result; `sources` reads the
same layers the same way to say which one won (tests/test_cli.py holds the two to the same
answer). No setting is a secret: the only secret, etcd's password, is never a setting
(generator/secret.py), so every value may be shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from generator.core.config import ENV_PREFIX, Config

# The flags that are not named for their setting (see parser.py): -q and -v set log_level.
_NAMED: Mapping[str, Mapping[str, str]] = {"log_level": {"warning": "-q", "debug": "-v"}}


def sources(
    properties: Mapping[str, Any],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_data: Any,
    file_name: str | None,
) -> dict[str, str]:
    """Setting -> where its value came from, worded as config.resolve words it in errors."""
    found: dict[str, str] = {}
    given = file_data if isinstance(file_data, dict) else {}
    for key in properties:
        variable = ENV_PREFIX + key.upper()
        if flags.get(key) is not None:
            flag = "--" + key.replace("_", "-")
            found[key] = _NAMED[key].get(flags[key], flag) if key in _NAMED else flag
        elif variable in environ:
            found[key] = f"environment variable {variable}"
        elif key in given:
            found[key] = f"config file {file_name}"
        else:
            found[key] = "the default"
    return found


def shown(value: Any) -> str:
    """A resolved value as JSON (a set sorted; an address or network as text)."""
    if isinstance(value, frozenset):
        value = sorted(value, key=str)
    return json.dumps(value, default=str)


def setting_lines(config: Config, origin: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(line, setting, source) for each setting, in the schema's order."""
    for key, source in origin.items():
        yield f"setting {key} = {shown(getattr(config, key))} from {source}", key, source
