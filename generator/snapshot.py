"""Load a registry snapshot: etcdwatch's JSON (or YAML written by hand) to plain data."""

from __future__ import annotations

import hashlib
import json
import re
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


def _key_text(loader: yaml.SafeLoader, key: yaml.Node) -> str:
    return key.value if isinstance(key, yaml.ScalarNode) else str(loader.construct_object(key))


def _string_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    """Keys as written: etcd keys are text, so `no:` is the branch "no", not False, and `1.10:`
    is "1.10", not 1.1. A key written twice in the mapping itself (not one a `<<` merge brings
    and the mapping overrides) makes it a _Twice."""
    own: dict[str, yaml.Node] = {}
    twice: list[tuple[str, Any, Any]] = []
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge":
            continue
        text = _key_text(loader, key)
        if text in own:
            twice.append((text, own[text], value))
        own[text] = value
    loader.flatten_mapping(node)
    mapping: dict[str, Any] = _Twice() if twice else {}
    for key, value in node.value:
        mapping[_key_text(loader, key)] = loader.construct_object(value, deep=True)
    if twice:
        assert isinstance(mapping, _Twice)
        mapping.twice = [
            (
                key,
                loader.construct_object(first, deep=True),
                loader.construct_object(second, deep=True),
            )
            for key, first, second in twice
        ]
    return mapping


_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
# Python refuses to convert a text of more digits to an int (a denial-of-service guard).
_MAX_DIGITS = 4300


def _integer(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    """A YAML integer as written in decimal; anything else YAML 1.1 reads as one (010 as 8,
    0x50, 1:20 as 80, 1_000) stays the text it was, as etcd would hold it, and so does a
    number of more digits than Python converts: the schema then refuses it where it matters
    (a port), instead of taking 010 for port 8."""
    text = str(loader.construct_scalar(node))
    if _DECIMAL.fullmatch(text) and len(text) <= _MAX_DIGITS:
        return int(text)
    return text


def _json_integer(text: str) -> int | str:
    """A JSON integer, or its text when it has more digits than Python converts."""
    return int(text) if len(text) <= _MAX_DIGITS else text


class _Twice(dict[str, Any]):
    """An object in which a key was given twice: (key, first value, second value) each."""

    twice: list[tuple[str, Any, Any]]
    made = 0  # how many were ever made: loads() looks for them only when this changed

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        _Twice.made += 1


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) == len(pairs):
        return mapping
    twice: list[tuple[str, Any, Any]] = []
    first: dict[str, Any] = {}
    for key, value in pairs:
        if key in first:
            twice.append((key, first[key], value))
        else:
            first[key] = value
    marked = _Twice(mapping)
    marked.twice = twice
    return marked


class DuplicateKeys(list[list[str]]):
    """What loads() puts in place of a deployment in which a key was given twice: one
    [key path, first value, second value] each, the values as validate.show() prints them.

    etcd holds one value per key, so a duplicate comes from a snapshot written or edited by
    hand (or corrupted): neither value can be trusted to be the one meant, and a later value
    could hide a refused address behind a good one. So the deployment is skipped, with a
    problem naming the key and both values, and every other deployment routes. It is a list,
    which no deployment is, so it never compares equal to a deployment's content."""


_StringKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _string_keys)
_StringKeyLoader.add_constructor("tag:yaml.org,2002:int", _integer)


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
        return json.loads(text, object_pairs_hook=_json_object, parse_int=_json_integer)
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
    made = _Twice.made
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
    if _Twice.made != made:  # a key was given twice (here, or in another thread's parse)
        return _mark_duplicates(data, source)
    return data


def _mark_duplicates(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with each deployment in which a key was given twice replaced by its
    DuplicateKeys; SnapshotError for a key given twice outside any deployment."""
    from .validate import key_path, show  # validate imports this module

    found: dict[str, DuplicateKeys] = {}
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((child, (*path, str(index))) for index, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        stack.extend((child, (*path, key)) for key, child in node.items())
        if not isinstance(node, _Twice):
            continue
        for key, first, second in node.twice:
            where = (*path, key)
            if len(where) < 2 or where[0] != "deployment":
                raise SnapshotError(
                    f"{source}: the key {key_path(*where)} is given twice ({show(first)}, then "
                    f"{show(second)}); a registry key holds one value: remove one; nothing was "
                    "changed"
                )
            entry = [key_path(*where), show(first), show(second)]
            found.setdefault(where[1], DuplicateKeys()).append(entry)
    deployments = dict(data["deployment"])  # a plain dict, also when its own keys were twice
    for name, entries in found.items():
        deployments[name] = DuplicateKeys(sorted(entries))
    return {**data, "deployment": deployments}


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
