from r3.cli import app

# The guard matters: vLLM starts its engine core with `spawn`, which imports this module again.
if __name__ == "__main__":
    app()
