"""Load a registry snapshot: etcdwatch's JSON (or YAML written by hand) to plain data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
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


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's complaint in a few words, with its line and column (no source excerpt)."""
    mark = getattr(error, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(error, 'problem', None) or 'cannot be parsed'}{at}"


def _kind(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return "empty" if value is None else kinds.get(type(value), type(value).__name__)


def _parse(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        if text.lstrip().startswith(("{", "[")):
            raise SnapshotError(
                f"{source}: not valid JSON ({json_error.msg} at line {json_error.lineno}, "
                f"column {json_error.colno}); nothing was changed"
            ) from None
    try:
        return yaml.load(text, Loader=_StringKeyLoader)
    except yaml.YAMLError as yaml_error:
        raise SnapshotError(
            f"{source}: neither JSON nor YAML ({yaml_problem(yaml_error)}); nothing was changed"
        ) from None


# /deployment/<branch>/service/<service>/ip is 5 levels. Deeper than this is no registry, and
# it keeps every later stage (jsonschema, snapshot_id's json.dumps) far from the recursion limit.
MAX_DEPTH = 64


_JSON_LEAVES = (str, int, float, bool, type(None))


def _depth(data: Any) -> int:
    """How deeply objects and lists nest in `data`, found without recursion.

    Raises TypeError for anything JSON cannot hold (YAML's !!timestamp, !!binary, !!set ...).
    """
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif not isinstance(node, _JSON_LEAVES):
            raise TypeError(type(node).__name__)
    return deepest


def loads(text: str, source: str = "snapshot") -> dict[str, Any]:
    """Parse JSON, or failing that YAML, and check the snapshot's outer shape.

    Raises SnapshotError for a snapshot that is unusable as a whole; anything wrong inside a
    single deployment is left to validate.validate().
    """
    try:
        data = _parse(text, source)
        too_deep = _depth(data) > MAX_DEPTH
    except RecursionError:
        too_deep = True
    except TypeError as error:
        raise SnapshotError(
            f"{source}: holds a {error} value, which etcd cannot (a YAML tag such as !!binary?); "
            "nothing was changed"
        ) from None
    if too_deep:
        raise SnapshotError(
            f"{source}: nested more than {MAX_DEPTH} levels deep, too deeply to be a registry "
            "snapshot; nothing was changed"
        )
    if not isinstance(data, dict):
        raise SnapshotError(
            f"{source}: the snapshot is {_kind(data)}, not an object with a 'deployment' key; "
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
            f"{source}: /deployment is {_kind(data['deployment'])}, not a directory of "
            "deployments; nothing was changed"
        )
    return data


def canonical(value: Any) -> str:
    """JSON with sorted keys and ASCII escapes: equal content, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def snapshot_id(data: Mapping[str, Any], deployments: Mapping[str, str] | None = None) -> str:
    """A name for the snapshot that depends only on its content, never on order or time.

    `deployments` (name -> canonical JSON) saves recomputing what a caller already has.
    """
    if deployments is None:
        deployments = {name: canonical(value) for name, value in data["deployment"].items()}
    return snapshot_id_of(
        data, [deployment_part(name, deployments[name]) for name in sorted(deployments)]
    )


def deployment_part(name: str, text: str) -> bytes:
    """What snapshot_id hashes for one deployment: its name's length first (no name can pass
    for another), the name, its canonical JSON."""
    return f"{len(name)}:".encode("ascii") + name.encode("utf-8", "surrogatepass") + text.encode()


def snapshot_id_of(data: Mapping[str, Any], parts: Iterable[bytes]) -> str:
    """snapshot_id from every deployment's deployment_part, in the order of their names."""
    digest = hashlib.sha256(
        canonical({k: v for k, v in data.items() if k != "deployment"}).encode("ascii")
    )
    digest.update(b"".join(parts))
    return "sha256:" + digest.hexdigest()[:16]
