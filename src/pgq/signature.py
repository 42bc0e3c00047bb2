"""How a job's args bind to its handler: the one rule that enqueue checks and the worker applies.

The worker calls ``handler(**args)``, adding ``ctx=JobContext(...)`` when the handler
has a ``ctx`` parameter. So args fit when each required parameter is among them, each
of them is a parameter (or the handler takes ``**kwargs``), and ``ctx`` is not among
them when pgq fills it. Only names are checked, never types: args are JSON, and a
handler that wants an int from ``"7"`` may well convert it itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pgq.errors import shown

#: The parameter that receives the JobContext instead of an arg.
CONTEXT_PARAMETER = "ctx"

_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


@dataclass(frozen=True, slots=True)
class HandlerSignature:
    """What a handler takes by name, read once when its task is registered.

    Example::

        signature = HandlerSignature.read("resize_image", resize_image)
        signature.problem_with({"ur": "x"})
        # "resize_image() got an unexpected arg 'ur'; it takes: url"
    """

    task: str
    #: The names args may use, in the signature's order (``ctx`` left out when pgq fills it).
    names: tuple[str, ...]
    required: frozenset[str]
    #: Required parameters that only take a position: pgq, passing names, can never fill them.
    positional_only: tuple[str, ...]
    #: The handler has ``**kwargs``: any other name goes there.
    takes_any: bool
    #: The handler has a ``ctx`` parameter, which pgq fills with the JobContext.
    takes_context: bool
    _accepted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_accepted", frozenset(self.names))

    @classmethod
    def read(cls, task: str, handler: Callable[..., Any]) -> HandlerSignature:
        parameters = inspect.signature(handler).parameters.values()
        by_name = [p for p in parameters if p.kind in _BY_NAME]
        args = [p for p in by_name if p.name != CONTEXT_PARAMETER]
        return cls(
            task=task,
            names=tuple(p.name for p in args),
            required=frozenset(p.name for p in args if p.default is p.empty),
            positional_only=tuple(
                p.name for p in parameters if p.kind is _POSITIONAL_ONLY and p.default is p.empty
            ),
            takes_any=any(p.kind is _VAR_KEYWORD for p in parameters),
            takes_context=len(args) < len(by_name),
        )

    def problem_with(self, args: Mapping[str, Any]) -> str | None:
        """Why the worker could not call the handler with ``args``, or None if it can.

        ``args`` is a mapping with str keys, as enqueue's own checks and JSON ensure.
        """
        keys = args.keys()
        if self.positional_only:
            return (
                f"{self.task}() takes {_listed(self.positional_only)} by position only, but pgq "
                "passes args by name: remove the '/' from its signature"
            )
        if self.takes_context and CONTEXT_PARAMETER in keys:
            return (
                f"{self.task}() gets {CONTEXT_PARAMETER!r} from pgq (the JobContext): "
                "leave it out of the args"
            )
        if not self.takes_any and not self._accepted.issuperset(keys):
            unknown = [key for key in keys if key not in self._accepted]
            takes = f"it takes: {', '.join(self.names)}" if self.names else "it takes no args"
            if len(unknown) == 1:
                return f"{self.task}() got an unexpected arg {shown(unknown[0])}; {takes}"
            return f"{self.task}() got unexpected args {_listed(unknown)}; {takes}"
        if not self.required <= keys:
            missing = [name for name in self.names if name in self.required and name not in keys]
            if len(missing) == 1:
                return f"{self.task}() is missing the required arg {shown(missing[0])}"
            return f"{self.task}() is missing the required args {_listed(missing)}"
        return None


def _listed(names: Iterable[str]) -> str:
    return ", ".join(shown(name) for name in names)
