"""A test hook for crash-safety tests: stop at a named point of a named step and wait to be killed.

    RPO_PAUSE_AT=update:3 RPO_PAUSE_FILE=/tmp/paused rpo-train ...

writes the point's name to RPO_PAUSE_FILE when step 3's update has been applied (and nothing after it has run),
then sleeps; the test sends SIGKILL. Unset (always, outside tests) it costs one dictionary lookup."""
from __future__ import annotations

import os
import time
from pathlib import Path


def pause_point(name: str, step: int) -> None:
    if os.environ.get("RPO_PAUSE_AT") == f"{name}:{step}":
        Path(os.environ["RPO_PAUSE_FILE"]).write_text(name)
        time.sleep(3600)
