from r3.cli import app

app()
