"""Tests for L{veil.dashboard.schema} and L{veil.dashboard.paging}."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from twisted.trial.unittest import SynchronousTestCase

from veil.dashboard import paging
from veil.dashboard.schema import (
    JSON,
    TEXT,
    Array,
    Boolean,
    Integer,
    Object,
    String,
    Uuid,
    ValidationFailed,
)
from veil.errors import ApiError
from veil.store.admin import normalise_domain

SITE = Object({
    "domain": String(max_length=253, clean=normalise_domain),
    "origin": String(max_length=300, nullable=True),
    "paranoia": Integer(minimum=1, maximum=4),
    "plain_http": Boolean(),
    "owner": Uuid(),
    "tags": Array(items=String(max_length=5), max_items=2),
}, required=("domain",), defaults={"paranoia": 1})


class ValidationTests(SynchronousTestCase):
    """Bodies are checked field by field, every problem reported at once."""

    def errors(self, value: dict, source: str = JSON) -> dict[str, str]:
        with self.assertRaises(ValidationFailed) as caught:
            SITE.parse(value, source)
        return {e.field: e.code for e in caught.exception.errors}

    def test_valid_json(self) -> None:
        """Declared fields are converted and cleaned; absent optional ones take defaults."""
        owner = uuid4()
        self.assertEqual(SITE.parse({"domain": " Shop.Example.COM. ", "owner": str(owner),
                                     "origin": None, "tags": ["a"]}, JSON),
                         {"domain": "shop.example.com", "owner": owner, "origin": None,
                          "tags": ["a"], "paranoia": 1})

    def test_every_problem(self) -> None:
        """Missing, wrong types, bounds, unknown fields and cleaner errors are all listed."""
        self.assertEqual(self.errors({"paranoia": 9, "plain_http": "yes", "owner": "x",
                                      "tags": ["a", "b", "c"], "extra": 1}), {
            "domain": "required", "paranoia": "too_large", "plain_http": "type",
            "owner": "type", "tags": "too_long", "extra": "unknown"})
        self.assertEqual(self.errors({"domain": "not a domain"}), {"domain": "invalid"})
        self.assertEqual(self.errors({"domain": 5}), {"domain": "type"})
        self.assertEqual(self.errors({"domain": "a.b", "paranoia": True}), {"paranoia": "type"})
        self.assertEqual(self.errors({"domain": "a.b", "tags": [1]}), {"tags": "type"})
        self.assertEqual(self.errors({"domain": "a\x00.b"}), {"domain": "invalid"})

    def test_messages_for_people(self) -> None:
        """A cleaner's message becomes the field's message."""
        with self.assertRaises(ValidationFailed) as caught:
            SITE.parse({"domain": "10.0.0.1"}, JSON)
        self.assertIn("IP address", caught.exception.for_field("domain"))

    def test_text_sources(self) -> None:
        """Forms and queries carry text: numbers are parsed, an absent checkbox is false."""
        self.assertEqual(SITE.parse({"domain": "a.example", "paranoia": "3"}, TEXT),
                         {"domain": "a.example", "paranoia": 3, "plain_http": False})
        self.assertEqual(SITE.parse({"domain": "a.example", "plain_http": "on",
                                     "paranoia": ""}, TEXT),
                         {"domain": "a.example", "plain_http": True, "paranoia": 1})
        self.assertEqual(self.errors({"domain": "a.example", "paranoia": "3"}, JSON),
                         {"paranoia": "type"})

    def test_json_schema(self) -> None:
        """The declaration is also its JSON Schema."""
        schema = SITE.schema()
        self.assertEqual(schema["required"], ["domain"])
        self.assertFalse(schema["additionalProperties"])
        self.assertEqual(schema["properties"]["paranoia"], {"type": "integer", "minimum": 1,
                                                            "maximum": 4})
        self.assertEqual(schema["properties"]["owner"], {"type": "string", "format": "uuid"})
        self.assertTrue(schema["properties"]["origin"]["nullable"])


class PagingTests(SynchronousTestCase):
    """Keyset cursors round-trip, and anything else is a 400."""

    def test_round_trip(self) -> None:
        """A cursor carries its key's values with their types."""
        key = (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), UUID(int=7), "shop.example", 3)
        cursor = paging.encode_cursor(key)
        self.assertRegex(cursor, r"^[A-Za-z0-9_-]+$")
        self.assertEqual(paging.decode_cursor(cursor, (datetime, UUID, str, int)), key)

    def test_bad_cursors(self) -> None:
        """Garbage, another shape or other types are refused with invalid_cursor."""
        good = paging.encode_cursor(("a", 1))
        for cursor, types in (("%%%", (str,)), ("e30", (str,)), (good, (str,)),
                              (good, (int, int)), (good, (datetime, int))):
            with self.assertRaises(ApiError) as caught:
                paging.decode_cursor(cursor, types)
            self.assertEqual((caught.exception.status, caught.exception.code),
                             (400, "invalid_cursor"))

    def test_pages(self) -> None:
        """A page of limit rows has a next cursor only when one more row was found."""
        page = paging.Paging(limit=2)
        rows = [("a",), ("b",), ("c",)]
        result = page.result(rows, key=lambda r: r, item=lambda r: r[0])
        self.assertEqual(result["items"], ["a", "b"])
        self.assertEqual(paging.decode_cursor(result["next_cursor"], (str,)), ("b",))
        last = paging.Paging(limit=2, cursor=result["next_cursor"])
        self.assertEqual(last.after(str), ("b",))
        self.assertIsNone(last.result(rows[2:], key=lambda r: r, item=lambda r: r)["next_cursor"])
