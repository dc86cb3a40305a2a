# Values shared by the runtime facade and the temporalio bridge without importing temporalio.
from __future__ import annotations

from typing import Any

# "No workflow argument given" (None is a valid argument).
_NO_ARG: Any = object()
