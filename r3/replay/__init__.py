"""`r3 replay`: send a file of tasks through R3 and measure first- and second-attempt success.

`tasks` is the file format (one chat request with its verifier per line), `bfcl` and `xlam` turn
those benchmarks' records into it, `runner` sends the tasks (bounded concurrency, resumable by id),
`report` counts the verdicts per category (`r3 replay --serve` starts a server with
`r3/cli/local_server.py`).
"""
