"""
Request validation with field-level errors, and the same declarations as
JSON Schema for the OpenAPI description.

A route declares its body (and its query) as an L{Object} of fields::

    NEW_SITE = Object({
        "domain": String(max_length=253, clean=normalise_domain,
                         description="the host name to protect"),
        "origin": String(max_length=300, clean=normalise_upstream),
    }, required=("domain",))

The framework validates before the handler runs: C{call.body} is then a
dict holding only declared fields, converted and cleaned.  Every problem is
reported at once, one entry per field::

    {"error": {"code": "validation_failed", "message": "...",
               "detail": {"fields": [{"field": "domain", "code": "required",
                                      "message": "This field is required."}]}},
     "request_id": "..."}

JSON bodies are checked strictly (a number is not a string, unknown fields
are errors); HTML forms and query strings carry text, so there integers
are parsed and a checkbox that is absent is false.  A C{clean} function
turns the value into its normal form or raises C{ValueError} (or a
L{veil.errors.VeilError}) whose message becomes the field's error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from uuid import UUID

import attrs

from veil.errors import VeilError

#: Where values come from: a JSON document, or text (forms, query strings).
JSON, TEXT = "json", "text"


@attrs.frozen
class FieldError:
    field: str
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class ValidationFailed(VeilError):
    """
    Input that does not fit its declaration.

    @ivar errors: one L{FieldError} per problem.
    """

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    def for_field(self, name: str) -> str | None:
        """The first message about field C{name} (for forms), or L{None}."""
        for error in self.errors:
            if error.field == name:
                return error.message
        return None


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


@attrs.frozen
class Field:
    """What every field has: a description for the API documentation."""

    description: str = attrs.field(default="", kw_only=True)
    nullable: bool = attrs.field(default=False, kw_only=True)

    def check(self, value: Any, source: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _document(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            schema["description"] = self.description
        if self.nullable:
            schema["nullable"] = True
        return schema

    def validate(self, value: Any, source: str, path: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise _Invalid("null", "This field may not be null.")
        return self.check(value, source)


def _cleaned(clean: Callable[[Any], Any] | None, value: Any) -> Any:
    if clean is None:
        return value
    try:
        return clean(value)
    except (ValueError, VeilError) as e:
        raise _Invalid("invalid", str(e)) from None


@attrs.frozen
class String(Field):
    min_length: int = 0
    max_length: int = 1000
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    format: str | None = None
    #: Remove surrounding white space first (not for passwords).
    strip: bool = True
    clean: Callable[[str], Any] | None = None

    def check(self, value: Any, source: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid("type", "This field must be a string.")
        if self.strip:
            value = value.strip()
        if "\x00" in value:
            raise _Invalid("invalid", "This field may not contain NUL characters.")
        if len(value) < self.min_length:
            if self.min_length == 1:
                raise _Invalid("required", "This field may not be empty.")
            raise _Invalid("too_short", f"Use at least {self.min_length} characters.")
        if len(value) > self.max_length:
            raise _Invalid("too_long", f"Use at most {self.max_length} characters.")
        if self.choices is not None and value not in self.choices:
            raise _Invalid("choice", f"Choose one of: {', '.join(self.choices)}.")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Invalid("pattern", "This value does not have the expected form.")
        return _cleaned(self.clean, value)

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.format is not None:
            schema["format"] = self.format
        return self._document(schema)


@attrs.frozen
class Integer(Field):
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, source: str) -> Any:
        if source == TEXT and isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("type", "This field must be a whole number.")
        if self.minimum is not None and value < self.minimum:
            raise _Invalid("too_small", f"Use a number of at least {self.minimum}.")
        if self.maximum is not None and value > self.maximum:
            raise _Invalid("too_large", f"Use a number of at most {self.maximum}.")
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._document(schema)


_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no", "")


@attrs.frozen
class Boolean(Field):
    def check(self, value: Any, source: str) -> Any:
        if source == TEXT and isinstance(value, str):
            if value.strip().lower() in _TRUE:
                return True
            if value.strip().lower() in _FALSE:
                return False
        if not isinstance(value, bool):
            raise _Invalid("type", "This field must be true or false.")
        return value

    def schema(self) -> dict[str, Any]:
        return self._document({"type": "boolean"})


@attrs.frozen
class Uuid(Field):
    def check(self, value: Any, source: str) -> Any:
        if isinstance(value, str):
            try:
                return UUID(value.strip())
            except ValueError:
                pass
        raise _Invalid("type", "This field must be an id (a UUID).")

    def schema(self) -> dict[str, Any]:
        return self._document({"type": "string", "format": "uuid"})


@attrs.frozen
class Array(Field):
    items: Field = attrs.field(factory=String)
    max_items: int = 100

    def check(self, value: Any, source: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid("type", "This field must be a list.")
        if len(value) > self.max_items:
            raise _Invalid("too_long", f"Give at most {self.max_items} items.")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.items.validate(item, source, str(index)))
            except _Invalid as e:
                raise _Invalid(e.code, f"Item {index + 1}: {e.message}") from None
        return out

    def schema(self) -> dict[str, Any]:
        return self._document({"type": "array", "items": self.items.schema(),
                               "maxItems": self.max_items})


@attrs.frozen
class Object(Field):
    """
    A JSON object (or a form, or a query string) with declared fields.

    @ivar required: fields that must be present.
    @ivar defaults: values for absent optional fields.
    """

    fields: Mapping[str, Field] = attrs.field(factory=dict)
    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    #: Other members are allowed (documentation of free-form objects).
    open: bool = False

    def check(self, value: Any, source: str) -> Any:
        if not isinstance(value, Mapping):
            raise _Invalid("type", "This must be a JSON object.")
        return self.parse(value, source)

    def parse(self, value: Mapping[str, Any], source: str) -> dict[str, Any]:
        """
        The validated fields of C{value}.

        @raise ValidationFailed: listing every problem.
        """
        errors: list[FieldError] = []
        out: dict[str, Any] = {}
        if source == JSON and not self.open:
            for name in value:
                if name not in self.fields:
                    errors.append(FieldError(str(name)[:100], "unknown",
                                             "This field is not part of the request."))
        for name, field in self.fields.items():
            if name not in value or (source == TEXT and value[name] == "" and
                                     not isinstance(field, (String, Boolean))):
                if name in self.required:
                    errors.append(FieldError(name, "required", "This field is required."))
                elif source == TEXT and isinstance(field, Boolean):
                    out[name] = False
                elif name in self.defaults:
                    out[name] = self.defaults[name]
                continue
            try:
                out[name] = field.validate(value[name], source, name)
            except _Invalid as e:
                errors.append(FieldError(name, e.code, e.message))
        if errors:
            raise ValidationFailed(errors)
        return out

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: field.schema() for name, field in self.fields.items()},
            "additionalProperties": self.open,
        }
        if self.required:
            schema["required"] = list(self.required)
        return self._document(schema)

    def parameters(self) -> list[dict[str, Any]]:
        """The fields as OpenAPI query parameters."""
        return [{"name": name, "in": "query", "required": name in self.required,
                 "schema": field.schema()} for name, field in self.fields.items()]


@attrs.frozen
class Response:
    """
    A documented response: its status, what it means, and the shape of its
    JSON body (L{None}: no body, or not JSON).
    """

    status: int
    description: str
    body: Field | None = None
    content_type: str = "application/json"


#: The error body every failure has (documentation only).
ERROR = Object({
    "error": Object({
        "code": String(description="machine-readable, e.g. validation_failed"),
        "message": String(description="for a person"),
        "detail": Object(description="more, depending on the code (field errors: fields)",
                         nullable=True, open=True),
    }, required=("code", "message")),
    "request_id": String(description="also in the X-Request-Id header"),
}, required=("error", "request_id"))
