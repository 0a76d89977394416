"""Tests that the package metadata ships every module."""

from __future__ import annotations

import configparser
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent.parent


class PackagingTests(SynchronousTestCase):
    """setup.cfg lists every package, so a wheel install has all of Veil."""

    def test_every_package_listed(self) -> None:
        """Each directory under veil/ with an __init__.py is in [options] packages."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = set(config["options"]["packages"].split())
        found = {
            ".".join(path.parent.relative_to(ROOT).parts)
            for path in (ROOT / "veil").rglob("__init__.py")
        }
        self.assertEqual(found - listed, set())
        self.assertIn("twisted.plugins", listed)

    def test_schema_shipped(self) -> None:
        """The migrations are installed as data files."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        self.assertIn("schema/*.sql", config["options.data_files"]["share/veil/schema"])
