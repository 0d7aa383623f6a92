"""Load a registry snapshot: etcdwatch's JSON (or YAML written by hand) to plain data."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
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


_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_CONSTANTS = {"null": None, "true": True, "false": False}


def parse_json(text: str | bytes) -> Any:
    """json.loads, and where it gives up on nesting (Python's recursion limit, about 1,000
    levels) the same parse without recursion: text that is valid JSON always parses, however
    deep, so a deep registry entry can cost only its own deployment (see loads, KeyTree)."""
    try:
        return json.loads(text)
    except RecursionError:
        return _parse_deep(text.decode("utf-8") if isinstance(text, bytes) else text)


def _parse_deep(text: str) -> Any:
    """json.loads without recursion: a stack of the objects and lists still open. The same
    values, and a json.JSONDecodeError where json.loads would raise one (not always its words)."""
    scan: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
    stack: list[tuple[dict[str, Any] | list[Any], str]] = []  # (open container, pending key)

    def space(at: int) -> int:
        found = _SPACE.match(text, at)
        return found.end() if found else at

    def key(at: int) -> tuple[str, int]:
        """An object's key and its ':' at `at`; the position of its value."""
        if text[at : at + 1] != '"':
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, at
            )
        name, at = scan(text, at + 1, True)
        at = space(at)
        if text[at : at + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, at)
        return name, space(at + 1)

    at = space(0)
    while True:
        char = text[at : at + 1]
        value: Any
        if char == "{" or char == "[":
            at = space(at + 1)
            closing = "}" if char == "{" else "]"
            if text[at : at + 1] == closing:
                value, at = ({} if char == "{" else []), at + 1
            elif char == "{":
                name, at = key(at)
                stack.append(({}, name))
                continue
            else:
                stack.append(([], ""))
                continue
        elif char == '"':
            value, at = scan(text, at + 1, True)
        else:
            number = _NUMBER.match(text, at)
            word = next(
                (
                    w
                    for w in (*_CONSTANTS, "NaN", "Infinity", "-Infinity")
                    if text.startswith(w, at)
                ),
                None,
            )
            if word is not None:
                value = _CONSTANTS[word] if word in _CONSTANTS else float(word)
                at += len(word)
            elif number is not None:
                whole, fraction, exponent = number.groups()
                value = float(number.group()) if fraction or exponent else int(whole)
                at = number.end()
            else:
                raise json.JSONDecodeError("Expecting value", text, at)
        while True:  # `value` is complete: put it into its container, closing those that end
            if not stack:
                at = space(at)
                if at != len(text):
                    raise json.JSONDecodeError("Extra data", text, at)
                return value
            container, name = stack[-1]
            if isinstance(container, dict):
                container[name] = value
            else:
                container.append(value)
            at = space(at)
            char = text[at : at + 1]
            if char == ",":
                at = space(at + 1)
                if isinstance(container, dict):
                    name, at = key(at)
                    stack[-1] = (container, name)
                break
            if char != ("}" if isinstance(container, dict) else "]"):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
            value, at = container, at + 1
            stack.pop()


def _parse(text: str, source: str) -> Any:
    try:
        return parse_json(text)
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


# /deployment/<branch>/service/<service>/instance/<id>/ip is 5 levels below /deployment/<branch>.
# A deployment nested deeper than this is no registry entry: it is left out while reading (see
# Refused), so no later stage (jsonschema, json.dumps, the watcher's key walks) ever recurses
# on more than MAX_DEPTH + 2 levels. The rest of a snapshot (keys beside "deployment") may nest
# MAX_DEPTH levels in all.
MAX_DEPTH = 64
# What YAML aliases may add to a snapshot beyond the values written: a merge key (<<: *base)
# repeats a few; a "billion laughs" file (aliases of aliases) repeats 10^9 and is refused.
MAX_ALIAS_VALUES = 10_000


class Refused(str):
    """A deployment left out while reading, in the snapshot in its place: its text is what is
    wrong, the problem the pipeline reports for it (the deployment is skipped) with `code`. A
    registry value is never a Refused, even with the same text: only reading makes one."""

    code: str

    def __new__(cls, code: str, text: str) -> Refused:
        made = super().__new__(cls, text)
        made.code = code
        return made


TOO_DEEP = Refused(
    "too-deep",
    f"nests deeper than {MAX_DEPTH} levels: the deployment is skipped; register keys at most "
    f"{MAX_DEPTH} levels below /deployment/<branch> (a branch name with '/' nests: register it "
    "under its slug)",
)
ALIAS_BOMB = Refused(
    "too-many-aliases",
    f"its YAML aliases repeat more than {MAX_ALIAS_VALUES} values: the deployment is skipped; "
    "write the values out, or use fewer aliases",
)


_JSON_LEAVES = (str, int, float, bool, type(None))


def _shape(data: Any, deepest: int, budget: int) -> tuple[Refused | None, int]:
    """(why `data` is refused or None, how many values it holds), found without recursion.

    More than `deepest` levels of objects and lists (a YAML alias cycle is endless nesting) or
    more than `budget` values (YAML aliases can repeat a value without end) stop the walk.
    Raises TypeError for anything JSON cannot hold (YAML's !!timestamp, !!binary, !!set ...).
    """
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > budget:
            return ALIAS_BOMB, count
        if isinstance(node, dict | list):
            if depth >= deepest:
                return TOO_DEEP, count
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif not isinstance(node, _JSON_LEAVES):
            raise TypeError(type(node).__name__)
    return None, count


def loads(text: str, source: str = "snapshot") -> dict[str, Any]:
    """Parse JSON, or failing that YAML, and check the snapshot's outer shape.

    Raises SnapshotError for a snapshot that is unusable as a whole. A deployment nested
    deeper than MAX_DEPTH, or made too big by YAML aliases, is left out: a Refused in its place.
    Anything else wrong inside a single deployment is left to validate.validate().
    """
    try:
        data = _parse(text, source)
    except RecursionError:  # YAML nested deeper than PyYAML's parser goes (JSON never is)
        raise SnapshotError(
            f"{source}: nested too deeply to be a registry snapshot; nothing was changed"
        ) from None
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
    deployments = data["deployment"]
    if not isinstance(deployments, dict):
        raise SnapshotError(
            f"{source}: /deployment is {_kind(deployments)}, not a directory of "
            "deployments; nothing was changed"
        )
    # Parsed JSON is a tree: no value is repeated. YAML aliases repeat values (the same object
    # again): what they may add is bounded, each deployment refunded what it held once refused.
    budget = len(text) + MAX_ALIAS_VALUES
    try:
        rest = {key: value for key, value in data.items() if key != "deployment"}
        refused, count = _shape(rest, MAX_DEPTH, budget)
        if refused is not None:
            what = "nests" if refused is TOO_DEEP else "repeats (YAML aliases)"
            raise SnapshotError(
                f"{source}: what is beside /deployment {what} too much to be a registry "
                "snapshot; nothing was changed"
            )
        budget -= count
        for name, value in deployments.items():
            refused, count = _shape(value, MAX_DEPTH, budget)
            if refused is not None:
                deployments[name] = refused
            else:
                budget -= count
    except TypeError as error:
        raise SnapshotError(
            f"{source}: holds a {error} value, which etcd cannot (a YAML tag such as !!binary?); "
            "nothing was changed"
        ) from None
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
