# The OS and SDK boundaries: the Temporal bridge (the only importer of temporalio, with the demo
# workflows it serves), state files (locks, pid files), process identity and signalling, and the CLI's
# plain-socket client of the control endpoint. Rule: imports only the pure core; foreign exceptions stop
# here. This file stays empty: the CLI's hot paths import single modules of this package.
