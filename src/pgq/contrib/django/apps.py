"""The Django app that gives a project pgq's schema migration and ``manage.py pgq_work``."""

from __future__ import annotations

from django.apps import AppConfig


class PgqConfig(AppConfig):
    name = "pgq.contrib.django"
    # Not "django" (the package's last name): `manage.py migrate pgq`.
    label = "pgq"
    verbose_name = "pgq"
