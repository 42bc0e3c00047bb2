"""Settings of the test project: its database is $PGQ_DSN, the test's own."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["PGQ_DSN"])

SECRET_KEY = "test only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process's TZ from it: the test process's stays UTC
ROOT_URLCONF = "shopsite.urls"
INSTALLED_APPS = ["pgq.contrib.django", "store"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db["dbname"],
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
TASKS = {
    "default": {
        "BACKEND": "pgq.contrib.django.PgqBackend",
        "QUEUES": ["default", "emails"],
        # One attempt: a failing task is FAILED at once, without waiting for a retry.
        "OPTIONS": {"max_attempts": 1},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
