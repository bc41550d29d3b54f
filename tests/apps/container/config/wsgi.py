"""`config.wsgi:application`, as in a Django project: tests/apps/edge_app.py."""

from edge_app import application  # noqa: F401
