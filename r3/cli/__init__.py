"""The `r3` command: the composition root (docs/architecture.md).

The one package allowed to import every other: the kernel (the rest of `r3`), the server, the trainer
and the benchmarks. `r3.cli.main` assembles the commands; each command imports what it runs when it runs, so
`r3 --help` loads neither torch, TRL nor the server.
"""
