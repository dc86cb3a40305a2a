# Observability: event records become log lines (_logs), log files are bounded and read back
# (_logfiles), and metrics (_metrics). Rule: imports only the pure core; fed by event hooks, never
# called by the children. This file stays empty: the CLI's `logs` imports _logfiles alone.
