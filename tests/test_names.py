"""Branch and service names to DNS labels."""

from __future__ import annotations

import re

import pytest

from generator.core.names import MAX_LABEL, label, slug

# The oracle: a DNS label (RFC 1123), lower case, as hostnames need it.
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def is_label(text: str) -> bool:
    return LABEL.fullmatch(text) is not None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("master", "master"),
        ("Feature/JIRA-123_login", "feature-jira-123-login"),
        ("v17.2.0-rc42-ee", "v17-2-0-rc42-ee"),  # GitLab's own example
        ("--fix--", "fix"),
        ("a//b", "a--b"),  # GitLab does not squeeze runs of hyphens
        ("Ünïcode", "n-code"),
    ],
)
def test_slug_follows_gitlab_ci_commit_ref_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


def test_label_joins_slugs_with_a_hyphen() -> None:
    assert label("Feature/Foo", "web") == "feature-foo-web"


def test_long_labels_keep_a_prefix_and_end_in_a_stable_hash() -> None:
    first = label("x" * 60 + "-one", "web")
    second = label("x" * 60 + "-two", "web")
    assert len(first) == len(second) == MAX_LABEL
    assert first != second
    assert first.startswith("x" * 50)
    assert first == label("x" * 60 + "-one", "web")  # the same on every run and machine
    assert is_label(first) and is_label(second)


def test_a_label_never_ends_in_a_hyphen_after_shortening() -> None:
    made = label("a" * 55 + "-" * 10 + "b" * 10)
    assert is_label(made), made


@pytest.mark.parametrize("name", ["日本語", "///", "", "$;{}"])
def test_a_name_with_no_usable_character_still_gets_a_distinct_label(name: str) -> None:
    made = label(name)
    assert is_label(made)
    assert made == label(name)


def test_names_without_usable_characters_do_not_share_a_label() -> None:
    assert label("日本語") != label("中文")


@pytest.mark.parametrize(
    ("text", "valid"),
    [("a", True), ("a-b", True), ("-a", False), ("a-", False), ("A", False), ("a" * 64, False)],
)
def test_is_label(text: str, valid: bool) -> None:
    assert is_label(text) is valid
