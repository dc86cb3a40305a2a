# The pure core: errors, event records (with ConnectionState and the restart records), RestartPolicy,
# configuration records, the runtime's names and the state dir's layout. Rule: no trio, no I/O, no
# imports from outside this package (stdlib and attrs only); every other layer may import it. This file
# stays empty: the CLI's hot paths import single modules of this package.
