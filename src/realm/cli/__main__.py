"""``python -m realm.cli``."""

from realm.cli import app

app()
