# The supervision tree: the generic Supervisor, the event hub, the shared connection cell, the status
# board, the build table (_build: the runtime's children as one table) and one `serve_*` module per
# child. Rule: a child module never imports another child module (siblings share only what _build
# creates and passes in: the hub, the cell, the board); imports the core, the boundaries and
# observability, never the runtime, the daemon or the CLI.
