# -*- test-case-name: tests.test_ipc_control -*-
"""
Control messages (the channel's C{J} messages) dispatched by a table, one
per receiving class: each name has one handler and its fields' JSON types::

    class Receiver:
        controls = ControlTable()

        @controls.handler("close", id=INTEGER)
        def _onClose(self, id: int) -> None: ...

A message whose fields do not fit is rejected (logged, counted in the
channel's C{rejected}) before any handler runs, so whatever a handler raises
is a bug, not a bad message.  L{checkFields} also checks a worker's start-up message.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Protocol, TypeVar

from twisted.logger import Logger

from .wire import Control

__all__ = ["ANY", "BOOLEAN", "INTEGER", "INTEGERS", "NUMBER", "STRING", "STRINGS", "OBJECT", "ControlTable", "FieldType"]
__all__ += ["MessageError", "checkFields", "optional", "reject"]

_log = Logger()

_F = TypeVar("_F", bound=Callable[..., Any])


class MessageError(ValueError):
    """A control message's fields do not fit its name; the text says how."""


#: The default of a field that may not be left out.
_REQUIRED: Any = object()


class FieldType(NamedTuple):
    """What a field's value must be: C{check(value)} says whether it is; C{name} is for the error."""

    name: str
    check: Callable[[Any], bool]
    default: Any = _REQUIRED


#: Any JSON value (the handler checks it itself, e.g. a port number that
#: the server socket's own argument checks reject with an NSError).
ANY = FieldType("any value", lambda value: True)
#: A JSON integer (C{true}/C{false} are not integers here).
INTEGER = FieldType("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool))
NUMBER = FieldType("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool))
STRING = FieldType("a string", lambda value: isinstance(value, str))
BOOLEAN = FieldType("true or false", lambda value: isinstance(value, bool))
STRINGS = FieldType("a list of strings", lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value))
INTEGERS = FieldType("a list of integers", lambda value: isinstance(value, list) and all(INTEGER.check(v) for v in value))
OBJECT = FieldType("an object", lambda value: isinstance(value, dict))


def optional(type: FieldType, default: Any) -> FieldType:
    """A field that may be left out, with the value the handler gets then."""
    return FieldType(type.name, type.check, default)


Spec = Mapping[str, FieldType]


def checkFields(fields: Mapping[str, Any], spec: Spec, extra: bool = False) -> dict[str, Any]:
    """
    The fields C{spec} names, checked; an L{optional} one left out gets its default.

    @param extra: allow fields C{spec} does not name (left out of the
        result): for a message a later version may extend.
    @raise MessageError: naming the first field that does not fit.
    """
    kwargs: dict[str, Any] = {}
    for name, type in spec.items():
        if name in fields:
            if not type.check(fields[name]):
                raise MessageError(f"field {name!r} is {_shown(fields[name])}, not {type.name}")
            kwargs[name] = fields[name]
        elif type.default is not _REQUIRED:
            kwargs[name] = type.default
        else:
            raise MessageError(f"missing field {name!r}")
    if not extra:
        for name in fields:
            if name not in spec:
                raise MessageError(f"unexpected field {name!r}")
    return kwargs


#: The longest value an error shows; a longer one is named by its kind and
#: size: a value may be a secret (the start-up message's TLS keys) or huge.
_SHOWN = 24
_KINDS = {str: "a string", list: "a list", dict: "an object", int: "an integer", float: "a number"}


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    kind = _KINDS.get(type(value), "a value")
    return f"{kind} of length {len(value)}" if isinstance(value, (str, list, dict)) else kind


class _Counted(Protocol):
    rejected: int


def reject(type: str, who: str, channel: _Counted, error: str) -> None:
    """Log and count a bad message C{type} from C{who}, for a handler that finds it wrong (an id already in use)."""
    _log.warn("Bad {type!r} message from {who}: {error}", type=type, who=who, error=error)
    channel.rejected += 1


class ControlTable(dict[str, tuple[Callable[..., Any], Spec, bool]]):
    """Message name -> (handler, the fields it takes, extra)."""

    def __init__(self, base: ControlTable | None = None) -> None:
        """@param base: a table whose entries this one starts with (a subclass's)."""
        super().__init__(base or {})

    def handler(self, name: str, *, extra: bool = False, **fields: FieldType) -> Callable[[_F], _F]:
        """
        A decorator: the function handles the messages called C{name}, whose
        fields L{checkFields} checks with C{fields} and C{extra} (a name
        registered again, in a table made from a C{base}, gets the new one).
        """

        def register(function: _F) -> _F:
            self[name] = (function, fields, extra)
            return function

        return register

    def dispatch(self, message: Control, who: str, channel: _Counted, *context: Any) -> bool:
        """
        Call the handler of C{message} with C{context} and the message's
        fields as keyword arguments, once they fit (else L{reject} it).
        Return False if no handler has its name: the caller decides.
        """
        entry = self.get(message.type)
        if entry is None:
            return False
        handler, spec, extra = entry
        try:
            kwargs = checkFields(message.fields, spec, extra)
        except MessageError as e:
            reject(message.type, who, channel, str(e))
            return True
        # Outside the try: an error in the handler is a bug, raised to the
        # channel, which logs it as a failure.
        handler(*context, **kwargs)
        return True
