# -*- test-case-name: tests.test_ipc_control -*-
"""
Control messages (the channel's C{J} messages) dispatched by an explicit
table: each message name has one handler and the fields it takes, each with
the JSON type it must have.

A message whose fields do not fit - a missing field, one of the wrong type,
one the message does not have - is rejected before any handler runs: it is
logged with what was wrong and counted in the channel's C{rejected}.  Once
a handler runs, whatever it raises is the handler's own error (a bug, not
a bad message) and goes up to the channel, which logs it as a failure.

A table is made once per receiving class and filled with a decorator::

    class Receiver:
        controls = ControlTable()

        @controls.handler("close", id=INTEGER)
        def _onClose(self, id: int) -> None: ...

and a message goes to it with C{Receiver.controls.dispatch(message, who,
channel, receiver)}.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

from twisted.logger import Logger

__all__ = [
    "ANY",
    "BOOLEAN",
    "INTEGER",
    "NUMBER",
    "STRING",
    "ControlTable",
    "FieldType",
    "MessageError",
    "optional",
    "reject",
]

_log = Logger()

_F = TypeVar("_F", bound=Callable[..., Any])


class MessageError(ValueError):
    """
    A control message's fields do not fit its name; the text says how.
    """


class FieldType:
    """
    What a field's value must be: C{check(value)} says whether it is, and
    C{name} says what it should have been, for the error.
    """

    __slots__ = ("name", "check")

    def __init__(self, name: str, check: Callable[[Any], bool]) -> None:
        self.name = name
        self.check = check

    def __repr__(self) -> str:
        return f"<FieldType {self.name}>"


#: Any JSON value (the handler checks it itself, e.g. a port number that
#: the server socket's own argument checks reject with an NSError).
ANY = FieldType("any value", lambda value: True)
#: A JSON integer (C{true}/C{false} are not integers here).
INTEGER = FieldType("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool))
#: A JSON number, integer or not.
NUMBER = FieldType("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool))
#: A JSON string.
STRING = FieldType("a string", lambda value: isinstance(value, str))
#: C{true} or C{false}.
BOOLEAN = FieldType("true or false", lambda value: isinstance(value, bool))


class _Optional:
    """
    A field that may be left out: the handler then gets C{default}.
    """

    __slots__ = ("type", "default")

    def __init__(self, type: FieldType, default: Any) -> None:
        self.type = type
        self.default = default


def optional(type: FieldType, default: Any) -> _Optional:
    """
    A field that may be left out, with the value the handler gets then.
    """
    return _Optional(type, default)


class _Entry:
    __slots__ = ("handler", "required", "optional", "extra")

    def __init__(
        self,
        handler: Callable[..., Any],
        required: dict[str, FieldType],
        optional: dict[str, _Optional],
        extra: bool,
    ) -> None:
        self.handler = handler
        self.required = required
        self.optional = optional
        self.extra = extra

    def arguments(self, fields: dict[str, Any]) -> dict[str, Any]:
        """
        The handler's keyword arguments for C{fields}.

        @raise MessageError: naming the first field that does not fit.
        """
        kwargs: dict[str, Any] = {}
        for name, type in self.required.items():
            if name not in fields:
                raise MessageError(f"missing field {name!r}")
            kwargs[name] = _checked(name, fields[name], type)
        for name, spec in self.optional.items():
            kwargs[name] = _checked(name, fields[name], spec.type) if name in fields else spec.default
        if not self.extra:
            for name in fields:
                if name not in kwargs:
                    raise MessageError(f"unexpected field {name!r}")
        return kwargs


def _checked(name: str, value: Any, type: FieldType) -> Any:
    if not type.check(value):
        raise MessageError(f"field {name!r} is {value!r}, not {type.name}")
    return value


class _Message(Protocol):
    type: str
    fields: dict[str, Any]


class _Counted(Protocol):
    rejected: int


def reject(type: str, who: str, channel: _Counted, error: str) -> None:
    """
    Log a bad message C{type} from C{who} (what was wrong: C{error}) and
    count it in C{channel}'s C{rejected}; for a handler that finds its
    fields wrong in a way only it can tell (an id already in use).
    """
    _log.warn("Bad {type!r} message from {who}: {error}", type=type, who=who, error=error)
    channel.rejected += 1


class ControlTable:
    """
    Message name -> handler and the fields it takes.
    """

    def __init__(self, base: ControlTable | None = None) -> None:
        """
        @param base: a table whose entries this one starts with (a subclass
            that handles more messages than its base class).
        """
        self._entries: dict[str, _Entry] = base.entries() if base is not None else {}

    def entries(self) -> dict[str, _Entry]:
        """
        A copy of the table: message name -> what handles it.
        """
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def handler(self, name: str, *, extra: bool = False, **fields: FieldType | _Optional) -> Callable[[_F], _F]:
        """
        A decorator: the function handles the messages called C{name}.

        @param extra: fields not named here are allowed (and not passed
            on) - for a message a later version may extend.
        @param fields: each field the message has, with its L{FieldType}
            (required) or an L{optional} one.
        @return: a decorator that registers the function (a name
            registered again, in a table made from a C{base}, gets the new
            handler) and returns it unchanged.
        """
        required = {key: value for key, value in fields.items() if isinstance(value, FieldType)}
        optionals = {key: value for key, value in fields.items() if isinstance(value, _Optional)}

        def register(function: _F) -> _F:
            self._entries[name] = _Entry(function, required, optionals, extra)
            return function

        return register

    def dispatch(self, message: _Message, who: str, channel: _Counted, *context: Any) -> bool:
        """
        Call the handler of C{message} with C{context} and the message's
        fields as keyword arguments, once they fit.

        @param who: whose message it was, for the log.
        @param channel: counts a message whose fields do not fit in its
            C{rejected}.
        @return: False if no handler has the message's name (the caller
            decides what that means); True otherwise, also when its fields
            did not fit (that is logged and counted).
        """
        entry = self._entries.get(message.type)
        if entry is None:
            return False
        try:
            kwargs = entry.arguments(message.fields)
        except MessageError as e:
            reject(message.type, who, channel, str(e))
            return True
        # Outside the try: an error in the handler is a bug, raised to the
        # channel, which logs it as a failure.
        entry.handler(*context, **kwargs)
        return True
