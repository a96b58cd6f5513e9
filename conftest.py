"""Settings for every test of the repository (core, SDK, plugins, platforms).

Under CI (``CI`` set, as ``.ci/run`` has it) hypothesis draws the same examples on every run, so a
red CI always means a change broke something, never that a new random draw found an old bug; a
developer's run draws new examples each time and keeps failures in ``.hypothesis/`` to replay.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
