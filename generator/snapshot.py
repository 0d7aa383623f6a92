"""Load a registry snapshot: etcdwatch's JSON (or YAML written by hand) to plain data."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from .errors import SnapshotError


class _StringKeyLoader(yaml.SafeLoader):
    """YAML as etcd would hold it: keys are strings and timestamps stay the strings they were."""


_StringKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _string_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    """Keys as written: etcd keys are text, so `no:` is the branch "no", not False, and `1.10:`
    is "1.10", not 1.1."""
    loader.flatten_mapping(node)
    mapping: dict[str, Any] = {}
    for key, value in node.value:
        text = key.value if isinstance(key, yaml.ScalarNode) else str(loader.construct_object(key))
        mapping[text] = loader.construct_object(value, deep=True)
    return mapping


_StringKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _string_keys)


def loads(text: str, source: str = "snapshot") -> dict[str, Any]:
    """Parse JSON, or failing that YAML, and check the snapshot's outer shape.

    Raises SnapshotError for a snapshot that is unusable as a whole; anything wrong inside a
    single deployment is left to validate.validate().
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_error:
        if text.lstrip().startswith(("{", "[")):
            raise SnapshotError(
                f"{source}: not valid JSON ({json_error.msg} at line {json_error.lineno}, "
                f"column {json_error.colno}); nothing was changed"
            ) from None
        try:
            data = yaml.load(text, Loader=_StringKeyLoader)
        except yaml.YAMLError as yaml_error:
            where = getattr(yaml_error, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(yaml_error, "problem", None) or "cannot be parsed"
            raise SnapshotError(
                f"{source}: neither JSON nor YAML ({problem}{at}); nothing was changed"
            ) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SnapshotError(
            f"{source}: the snapshot is {kind}, not an object with a 'deployment' key; "
            "nothing was changed"
        )
    if "deployment" not in data:
        raise SnapshotError(
            f"{source}: no 'deployment' key (an empty or failed registry read is not 'no "
            "services'); nothing was changed. Read the /deployment prefix, e.g. "
            "etcdwatch -d /deployment"
        )
    if not isinstance(data["deployment"], dict):
        raise SnapshotError(
            f"{source}: /deployment is {type(data['deployment']).__name__}, not a directory of "
            "deployments; nothing was changed"
        )
    return data


def snapshot_id(data: Any) -> str:
    """A name for the snapshot that depends only on its content, never on order or time."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
