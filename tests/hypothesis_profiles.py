"""Hypothesis settings profiles, chosen by HYPOTHESIS_PROFILE (default: 'ci' when the CI
environment variable is set, as Hypothesis itself does, else 'dev').

* `ci`: the settings CI has always run with (Hypothesis's own 'ci' profile: derandomized, no
  deadline, no example database), and every test's own example count. `make test` and
  `.ci/run` use it.
* `dev`: a quarter of the examples (at least a few), random and with the example database, for
  a quick run while working: `pytest -m "not integration"`.

A test that asks for its own count says `max_examples=examples(N)`: N under 'ci', a quarter of N
under 'dev'.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 100  # Hypothesis's default max_examples, which 'ci' keeps

settings.register_profile("ci", settings.get_profile("ci"), max_examples=CI_EXAMPLES)
settings.register_profile(
    "dev",
    max_examples=CI_EXAMPLES // 4,
    deadline=None,  # a loaded machine makes timings meaningless; 'ci' keeps its own
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """`count` examples under 'ci', scaled like the profile's default everywhere else."""
    return min(count, max(5, count * settings().max_examples // CI_EXAMPLES))
