"""``pgq web``: an ASGI app with a JSON API for producers and a dashboard for operators.

An extra (``pip install "pgq-jobs[web]"``): Starlette, Jinja2 and uvicorn are
imported here and nowhere in the core. The parts, one duty each:

- ``app.py``: ``create_app``, which wires the parts, and the connection pool.
- ``security.py``: who may do what (token, session cookie, CSRF, read-only, loopback).
- ``api.py``: the JSON API under /api/, with ``openapi.py`` its OpenAPI document.
- ``api_input.py``: a request body checked field by field (422s that name the field).
- ``pages.py``: the server-rendered dashboard (``templates/``, ``static/``).

Every read and every action goes through ``pgq.admin`` (and ``pgq.enqueue``): the
web adds no SQL of its own, so the rules are those of the CLI. Mount it in your
own ASGI app under a prefix::

    from pgq.web import create_app
    app.mount("/pgq", create_app(dsn, token=os.environ["PGQ_WEB_TOKEN"]))
"""

from pgq.web.app import create_app

__all__ = ["create_app"]
