"""The crash tests' own tools (tests/crash.py): what a test reads of a run is that run's."""

from __future__ import annotations

from pathlib import Path

from .crash import Zygote


def test_a_run_killed_at_once_never_shows_the_previous_run_s_log(tmp_path: Path) -> None:
    """Runs share a log file; each killed as soon as it is started (as a crash test does when a run
    has nothing left to do) must leave an empty log, never the previous run's lines, which a test
    would take for this run's (a kill can land before the child has run at all)."""
    zygote = Zygote()
    try:
        log = tmp_path / "run.log"
        for attempt in range(50):
            log.write_text(f"run {attempt - 1}\n")
            run = zygote.start("import time; time.sleep(60)", log)
            run.kill()
            assert run.wait() == -9
            assert run.output() == "", f"attempt {attempt}"
    finally:
        zygote.close()
