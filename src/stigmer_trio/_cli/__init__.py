# The command line (`python -m stigmer_trio`): _main parses and dispatches, _settings resolves the
# configuration (flags > STIGMER_TRIO_* environment > TOML file > defaults) and hands it to a detached
# daemon, _commands runs each command. Rule: the only package that touches argv, the environment and
# stdout/stderr; its hot paths (--help, --version, `status`, `up` when a daemon already runs, `stop`
# when nothing runs) are stdlib only: trio, temporalio, attrs and psutil are imported inside the code
# paths that really start or stop something.
from __future__ import annotations

from ._main import main

__all__ = ["main"]
