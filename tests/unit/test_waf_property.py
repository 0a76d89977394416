"""
Property-based tests: the request view, the body parsers and the engine never
raise, whatever bytes arrive (heads, bodies, content types).
"""

from __future__ import annotations

from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf.engine import Engine
from veil.waf.policy import SitePolicy
from veil.waf.rawrequest import Refused, parse
from veil.waf.request import Request
from veil.waf.verdict import BENIGN, MALICIOUS, SUSPICIOUS

_ENGINE: list[Engine] = []


def engine() -> Engine:
    """The package's rules with the installed detectors, compiled once."""
    if not _ENGINE:
        _ENGINE.append(Engine())
    return _ENGINE[0]


COLLECTIONS = ("method", "uri", "path", "args", "args_names", "headers", "cookies",
               "cookies_names", "xml", "files", "file_content", "body")
CONTENT_TYPES = st.one_of(
    st.sampled_from([b"application/json", b"application/xml", b"text/xml; charset=utf-7",
                     b"multipart/form-data; boundary=x", b"multipart/form-data",
                     b"application/x-www-form-urlencoded", b"text/plain; charset=bogus",
                     b"image/png", b"", b"application/json; charset=utf-16"]),
    st.binary(max_size=60))
# Bodies that look like the formats, with random damage, and random bytes.
BODIES = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda a, b: a + b, st.sampled_from([
        b'{"a": [1, {"b": "', b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY e '", b"--x\r\n",
        b"--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"", b"a=1&b=%", b"<a b='"]),
        st.binary(max_size=300)),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")))
HEADERS = st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=80)),
                   max_size=8)


class NeverRaisesTests(SynchronousTestCase):
    """Arbitrary input is judged, never an exception."""

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(method=st.binary(max_size=12), target=st.binary(max_size=200), headers=HEADERS,
           content_type=CONTENT_TYPES, body=BODIES, complete=st.booleans(),
           paranoia=st.integers(min_value=1, max_value=4))
    def test_inspect(self, method: bytes, target: bytes, headers: list, content_type: bytes,
                     body: bytes, complete: bool, paranoia: int) -> None:
        """The view's collections, its anomalies and a verdict exist for any request."""
        request = Request(method, target, headers + [(b"Content-Type", content_type)], body,
                          complete)
        for collection in COLLECTIONS:
            for part in request.parts(collection):
                for index in range(len(part.values)):
                    self.assertTrue(part.names_of(index))
        self.assertIsInstance(request.anomalies, list)
        verdict = engine().inspect(request, SitePolicy(uuid4(), paranoia=paranoia),
                                   explain=True)
        self.assertIn(verdict.classification, (BENIGN, SUSPICIOUS, MALICIOUS))
        if verdict.excerpt is not None:
            self.assertLessEqual(len(verdict.excerpt), 1024)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=400), lenient=st.booleans())
    def test_raw_parse(self, data: bytes, lenient: bool) -> None:
        """A raw request is parsed or refused with a status, never anything else."""
        try:
            raw = parse(data, lenient=lenient)
        except Refused as e:
            self.assertIn(e.status, (400, 414, 431, 505))
        else:
            engine().inspect(raw.request(), SitePolicy(uuid4()))
