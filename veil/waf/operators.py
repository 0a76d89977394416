"""
The operators that are code rather than patterns: Veil's SQL injection and
XSS detectors, and any other detector a caller registers.

A detector is a function of a transformed value that returns a short reason
(a fingerprint) when the value is an injection and L{None} otherwise, with a
I{prefilter}: a regular expression in the multi-pattern engine's dialect
that every injection it detects matches.  The engine compiles the prefilter
with the other patterns and calls the detector only on values that match
it.  A detector may also have a cheap test of values it never flags
(C{rules_out}): a value the prefilter matched but that test rules out is
dropped at once, as if the detector had said no.  A rule names a detector
with C{detect = "sqli"}: the C{detect_sqli} operator of the registry given
to the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

import attrs


@attrs.frozen
class Detector:
    """A detector and the prefilter every value it detects matches."""

    name: str
    prefilter: str
    detect: Callable[[str], str | None]
    #: Whether a value is one the detector never flags (cheaply), or None.
    rules_out: Callable[[str], bool] | None = None


def operator_name(detector: str) -> str:
    """The registry key of a rule's C{detect = NAME}."""
    return f"detect_{detector}"


def registry(*detectors: Detector) -> dict[str, Detector]:
    """A registry of these detectors, keyed by operator name."""
    return {operator_name(d.name): d for d in detectors}


#: The detector modules Veil ships: each has C{detect(text) -> str | None}
#: and C{PREFILTER}, and may have C{rules_out(text) -> bool}.
BUILTIN = ("sqli", "xss")


def default_registry() -> Mapping[str, Detector]:
    """
    The built-in detectors that are installed (C{veil.waf.sqli},
    C{veil.waf.xss}); a rule naming a missing one is reported unavailable
    by the engine and never runs.
    """
    found = []
    for name in BUILTIN:
        module_name = f"veil.waf.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            raise
        detect = getattr(module, "detect", None)
        prefilter = getattr(module, "PREFILTER", None)
        if callable(detect) and isinstance(prefilter, str) and prefilter:
            found.append(Detector(name, prefilter, detect, getattr(module, "rules_out", None)))
    return registry(*found)
