"""A small Django project on pgq: tests/test_django.py runs it, in-process and through manage.py."""
