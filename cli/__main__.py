"""`python -m cli …`: the `r3` command as a module (what `accelerate launch -m cli train` runs)."""

from cli.main import main

# The guard matters: vLLM starts its engine core with `spawn`, which imports this module again.
if __name__ == "__main__":
    main()
