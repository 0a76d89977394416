"""
Tests of the systemd units in C{deploy/}, through C{deploy/check-units}: the
exposure score systemd gives them (skipped, saying why, where
systemd-analyze is missing or too old), and the two units' sandboxes kept
the same.

Running the unit under a real systemd (C{deploy/check-units --run}) boots a
container and installs Veil into it, so it is not part of the suite; the
README's "Production" section says how to run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
CHECK = DEPLOY / "check-units"
SKIPPED = 77

#: Keys of [Service] that differ between the units on purpose.
_OWN = {"ExecStart", "TimeoutStopSec"}


def check_units(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(CHECK), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    return done.returncode, done.stdout + done.stderr


def service_settings(unit: Path) -> list[tuple[str, str]]:
    """The [Service] settings of a unit file, in order, without comments."""
    settings, section = [], None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.append((key, value))
    return settings


class ExposureTests(SynchronousTestCase):
    """Both units score 2.0 or below; a unit without the sandbox fails the check."""

    def run_check(self, *args: str) -> tuple[int, str]:
        status, output = check_units(*args)
        if status == SKIPPED:
            raise SkipTest(output.strip())
        return status, output

    def test_units_score(self) -> None:
        """systemd-analyze security --offline=true rates veil.service and veil@.service <= 2.0."""
        status, output = self.run_check()
        self.assertEqual(status, 0, output)
        scores = {line.split(":")[0]: float(line.split()[2]) for line in output.splitlines()
                  if " exposure " in line}
        self.assertEqual(set(scores), {"veil.service", "veil@.service"})
        for unit, score in scores.items():
            self.assertLessEqual(score, 2.0, unit)

    def test_weak_unit_fails(self) -> None:
        """The unit as it was before the sandbox (6.2, "MEDIUM") fails the check."""
        weak = Path(self.mktemp())
        weak.mkdir()
        unit = weak / "weak.service"
        unit.write_text(
            "[Service]\nType=notify\nUser=veil\nExecStart=/opt/veil/bin/twistd veil\n"
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nNoNewPrivileges=true\n"
            "ProtectSystem=strict\nProtectHome=true\nPrivateTmp=true\n")
        status, output = self.run_check(str(unit))
        self.assertEqual(status, 1, output)
        self.assertIn("weak.service: exposure", output)
        self.assertIn("FAILED: above 2.0", output)

    def test_without_systemd(self) -> None:
        """
        Where systemd-analyze is missing (a CI machine without systemd), the
        check exits 77 and says what to install, rather than passing.
        """
        status, output = check_units(env={"PATH": self.mktemp(), "HOME": os.devnull})
        self.assertEqual(status, SKIPPED, output)
        self.assertIn("systemd-analyze is not installed (Debian: apt-get install systemd)",
                      output)


class SameSandboxTests(SynchronousTestCase):
    """veil@.service keeps veil.service's sandbox."""

    def test_same_settings(self) -> None:
        """The [Service] settings of the two units are the same, but for ExecStart and the stop time-out."""
        single, template = (
            [(k, v) for k, v in service_settings(DEPLOY / name) if k not in _OWN]
            for name in ("veil.service", "veil@.service"))
        self.assertEqual(single, template)
        self.assertIn(("SystemCallFilter", "@system-service"), single)
