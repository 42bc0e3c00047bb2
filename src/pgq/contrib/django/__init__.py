"""Django's tasks framework on pgq: a task backend, a worker command, the schema migration.

In settings::

    INSTALLED_APPS = [..., "pgq.contrib.django"]
    TASKS = {"default": {"BACKEND": "pgq.contrib.django.PgqBackend"}}

then ``manage.py migrate`` creates pgq's schema, ``my_task.enqueue(...)`` writes a job
in Django's transaction, and ``manage.py pgq_work`` runs them. Django 6's
``django.tasks`` and, before it, the ``django-tasks`` backport both work
(``compat``). docs/howto/django.md has a whole project.

Modules: ``backend`` (PgqBackend: enqueue and get_result), ``results`` (a job as a
TaskResult), ``worker_app`` (the pgq App of the project's tasks), ``database``
(Django's connection and DSN), ``schema`` (what the migrations run), ``apps``,
``migrations``, ``management.commands.pgq_work``.
"""

from pgq.contrib.django.backend import PgqBackend

__all__ = ["PgqBackend"]
