"""OpenAI's graders as R3 verifiers: a client's `verifier` may be an OpenAI grader object, accepted as
written (OpenAI's graders guide: https://platform.openai.com/docs/guides/graders). `common` holds what
every grader shares (its spec's base, the sample it reads, its sandboxed templates); each grader type
is a module of this package, registered in `verifiers/__init__.py`'s list of built-in modules."""
