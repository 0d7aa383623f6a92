"""-v's account of the settings: each one's value and where it came from, as config.resolve
recorded it (Config.sources). No setting is a secret: the only secret, etcd's password, is never
a setting (generator/secret.py), so every value may be shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from generator.core.config import Config

# The flags that are not named for their setting (see parser.py): -q and -v set log_level.
_NAMED: Mapping[str, Mapping[str, str]] = {"log_level": {"warning": "-q", "debug": "-v"}}


def shown(value: Any) -> str:
    """A resolved value as JSON (a set sorted; an address or network as text)."""
    if isinstance(value, frozenset):
        value = sorted(value, key=str)
    return json.dumps(value, default=str)


def setting_lines(config: Config) -> Iterator[tuple[str, str, str]]:
    """(line, setting, source) for each setting, in the schema's order."""
    for key, source in config.sources:
        value = getattr(config, key)
        if source == "--" + key.replace("_", "-") and key in _NAMED:
            source = _NAMED[key].get(value, source)
        yield f"setting {key} = {shown(value)} from {source}", key, source
