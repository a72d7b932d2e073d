"""`python -m r3 …`: the `r3` command as a module (what `accelerate launch -m r3 train` runs)."""

from r3.cli.main import main

# The guard matters: vLLM starts its engine core with `spawn`, which imports this module again.
if __name__ == "__main__":
    main()
