"""The pgq App a worker runs for a Django project: one pgq task per Django task.

``manage.py pgq_work`` hands ``pgq work`` the APP ``pgq.contrib.django.worker_app:app``.
Reading ``app`` sets Django up (in ``--processes`` children, from the
``DJANGO_SETTINGS_MODULE`` they inherit), imports each installed app's ``tasks``
module, and registers every Django task found there that uses the backend named by
``$PGQ_DJANGO_BACKEND`` (default ``default``), as pgq task ``<module>.<function>``.
A task defined elsewhere is found when an app's ``tasks`` module imports it.
"""

from __future__ import annotations

import os
import sys
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from pgq.contrib.django.compat import Task, TaskContext, task_backends
from pgq.errors import ConfigError
from pgq.tasks import App, Handler, JobContext

if TYPE_CHECKING:
    from pgq.contrib.django.backend import PgqBackend

APP_PATH = "pgq.contrib.django.worker_app:app"
#: Which task backend (an alias in settings.TASKS) the worker serves.
BACKEND_ENV_VAR = "PGQ_DJANGO_BACKEND"
DEFAULT_BACKEND = "default"

_built: dict[str, App] = {}


def __getattr__(name: str) -> App:
    """``app``, built on first use (``pgq work`` reads it by name, as any APP)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    alias = os.environ.get(BACKEND_ENV_VAR, DEFAULT_BACKEND)
    if alias not in _built:
        _setup_django()
        _built[alias] = build_app(alias)
    return _built[alias]


def _setup_django() -> None:
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


def pgq_backend(alias: str) -> PgqBackend:
    """The task backend ``alias`` of settings.TASKS, which must be pgq's."""
    from pgq.contrib.django.backend import PgqBackend

    try:
        backend = task_backends[alias]
    except Exception as error:  # Django's InvalidTaskBackend: no such alias
        raise ConfigError(f"no task backend {alias!r} in settings.TASKS: {error}") from None
    if not isinstance(backend, PgqBackend):
        raise ConfigError(
            f"task backend {alias!r} is {type(backend).__module__}.{type(backend).__name__}, "
            "not pgq.contrib.django.PgqBackend"
        )
    return backend


def build_app(alias: str) -> App:
    """A pgq App with the project's Django tasks that use the task backend ``alias``."""
    backend = pgq_backend(alias)
    app = App(schema=backend.schema)
    for task in discover_tasks(alias):
        app.task(name=task.module_path, queue=task.queue_name, max_attempts=backend.max_attempts)(
            handler_for(task, backend)
        )
    if not app.tasks:
        raise ConfigError(
            f"no Django task uses the task backend {alias!r}: define @task functions in an "
            "installed app's tasks module (myapp/tasks.py)"
        )
    return app


def discover_tasks(alias: str) -> list[Task[Any, Any]]:
    """The Django tasks of backend ``alias`` in every installed app's ``tasks`` module(s)."""
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")
    found: dict[str, Task[Any, Any]] = {}
    for config in apps.get_app_configs():
        prefix = f"{config.name}.tasks"
        modules = [
            module
            for name, module in list(sys.modules.items())
            if module is not None and (name == prefix or name.startswith(f"{prefix}."))
        ]
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, Task) and value.backend == alias:
                    found.setdefault(value.module_path, value)
    return [found[name] for name in sorted(found)]


def handler_for(task: Task[Any, Any], backend: PgqBackend) -> Handler:
    """The pgq handler that runs ``task``: args and kwargs as the job stored them."""
    if iscoroutinefunction(task.func):

        async def run_async(args: list[Any], kwargs: dict[str, Any], ctx: JobContext) -> Any:
            if task.takes_context:
                result = await backend.aget_result(str(ctx.job_id))
                return await task.acall(TaskContext(task_result=result), *args, **kwargs)
            return await task.acall(*args, **kwargs)

        return run_async

    def run(args: list[Any], kwargs: dict[str, Any], ctx: JobContext) -> Any:
        from django.db import close_old_connections

        # As Django does around a request: a handler thread keeps its connections
        # between jobs, and one that broke or outlived CONN_MAX_AGE is replaced.
        close_old_connections()
        try:
            if task.takes_context:
                result = backend.get_result(str(ctx.job_id))
                return task.call(TaskContext(task_result=result), *args, **kwargs)
            return task.call(*args, **kwargs)
        finally:
            close_old_connections()

    return run
