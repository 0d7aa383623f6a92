"""Load a registry snapshot: etcdwatch's JSON (or YAML written by hand) to plain data."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from generator.core.errors import SnapshotError
from generator.core.names import key_path, show

if TYPE_CHECKING:  # imported on use: a JSON snapshot (etcdwatch's, the registry's) needs no YAML
    import yaml


@cache
def _yaml_loader() -> type[yaml.SafeLoader]:
    """YAML as etcd would hold it: keys are strings and timestamps stay the strings they were
    (PyYAML's safe loader, made on the first YAML snapshot)."""
    import yaml

    class StringKeyLoader(yaml.SafeLoader):
        pass

    StringKeyLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    StringKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _string_keys)
    StringKeyLoader.add_constructor("tag:yaml.org,2002:int", _integer)
    return StringKeyLoader


def _key_text(loader: yaml.SafeLoader, key: yaml.Node) -> str:
    import yaml

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
    [key path, first value, second value] each, the values as names.show() prints them.

    etcd holds one value per key, so a duplicate comes from a snapshot written or edited by
    hand (or corrupted): neither value can be trusted to be the one meant, and a later value
    could hide a refused address behind a good one. So the deployment is skipped, with a
    problem naming the key and both values, and every other deployment routes. It is a list,
    which no deployment is, so it never compares equal to a deployment's content."""


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


def parse_json(text: str | bytes, snapshot: bool = False) -> Any:
    """json.loads, and where it gives up on nesting (Python's recursion limit, about 1,000
    levels) the same parse without recursion: text that is valid JSON always parses, however
    deep, so a deep registry entry can cost only its own deployment (see loads, KeyTree).

    `snapshot`: as a snapshot is read, a key given twice is marked (see _Twice) and an integer
    of more digits than Python converts stays text; etcd's own answers need neither."""
    pairs: Callable[[list[tuple[str, Any]]], dict[str, Any]] = _json_object if snapshot else dict
    integer: Callable[[str], Any] = _json_integer if snapshot else int
    try:
        if snapshot:
            return json.loads(text, object_pairs_hook=pairs, parse_int=integer)
        return json.loads(text)
    except RecursionError:
        deep = text.decode("utf-8") if isinstance(text, bytes) else text
        return _parse_deep(deep, pairs, integer)


def _parse_deep(
    text: str,
    pairs: Callable[[list[tuple[str, Any]]], dict[str, Any]] = dict,
    integer: Callable[[str], Any] = int,
) -> Any:
    """json.loads without recursion: a stack of the objects and lists still open. The same
    values (objects made by `pairs` from their key-value pairs, integers by `integer`), and a
    json.JSONDecodeError where json.loads would raise one (not always its words)."""
    scan: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
    # (an object?, its pairs or items so far, the pending key of an object)
    stack: list[tuple[bool, list[Any], str]] = []

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
                value, at = (pairs([]) if char == "{" else []), at + 1
            elif char == "{":
                name, at = key(at)
                stack.append((True, [], name))
                continue
            else:
                stack.append((False, [], ""))
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
                value = float(number.group()) if fraction or exponent else integer(whole)
                at = number.end()
            else:
                raise json.JSONDecodeError("Expecting value", text, at)
        while True:  # `value` is complete: put it into its container, closing those that end
            if not stack:
                at = space(at)
                if at != len(text):
                    raise json.JSONDecodeError("Extra data", text, at)
                return value
            is_object, items, name = stack[-1]
            items.append((name, value) if is_object else value)
            at = space(at)
            char = text[at : at + 1]
            if char == ",":
                at = space(at + 1)
                if is_object:
                    name, at = key(at)
                    stack[-1] = (True, items, name)
                break
            if char != ("}" if is_object else "]"):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
            value, at = (pairs(items) if is_object else items), at + 1
            stack.pop()


def _parse(text: str, source: str) -> Any:
    try:
        return parse_json(text, snapshot=True)
    except json.JSONDecodeError as json_error:
        if text.lstrip().startswith(("{", "[")):
            raise SnapshotError(
                f"{source}: not valid JSON ({json_error.msg} at line {json_error.lineno}, "
                f"column {json_error.colno}); nothing was changed"
            ) from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
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
    made = _Twice.made
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
    if _Twice.made != made:  # a key was given twice (here, or in another thread's parse)
        return _mark_duplicates(data, source)
    return data


def _mark_duplicates(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with each deployment in which a key was given twice replaced by its
    DuplicateKeys; SnapshotError for a key given twice outside any deployment."""
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


def deployment_text(value: Any) -> str:
    """What stands for one deployment's content: its canonical JSON, or for a deployment refused
    while reading (Refused) "!" and the refusal (no canonical JSON starts with "!")."""
    return "!" + value if isinstance(value, Refused) else canonical(value)


def deployment_texts(data: Mapping[str, Any]) -> dict[str, str]:
    """deployment_text of every deployment of a loaded snapshot, by name."""
    return {name: deployment_text(value) for name, value in data["deployment"].items()}


def snapshot_id(data: Mapping[str, Any], texts: Mapping[str, str] | None = None) -> str:
    """A name for the snapshot that depends only on its content, never on order or time.

    `texts` (deployment_texts) saves recomputing what a caller already has.
    """
    if texts is None:
        texts = deployment_texts(data)
    return snapshot_id_of(data, [deployment_part(name, texts[name]) for name in sorted(texts)])


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
