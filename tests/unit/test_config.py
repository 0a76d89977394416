"""Tests for L{veil.config}."""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from veil.config import KEYS, SECTIONS, Config, load, section_keys
from veil.errors import ConfigError


class DefaultsTests(SynchronousTestCase):
    """With no file and no environment, Veil runs on its embedded defaults."""

    def test_embedded_defaults(self) -> None:
        """Loopback ports 8443/8080/8081, ./veil-data and the embedded database."""
        config = load(None, environ={})
        self.assertEqual((config.edge.address, config.edge.port), ("127.0.0.1", 8443))
        self.assertEqual((config.http.address, config.http.port), ("127.0.0.1", 8080))
        self.assertEqual((config.dashboard.address, config.dashboard.port), ("127.0.0.1", 8081))
        self.assertEqual(config.data_dir, Path("veil-data").absolute())
        self.assertTrue(config.uses_embedded_database)
        self.assertIsNone(config.database.url)

    def test_example_file_is_the_defaults(self) -> None:
        """
        deploy/veil.toml.example loads, names every key, and gives exactly
        the defaults (so it cannot drift from what Veil does).
        """
        example = Path(__file__).parents[2] / "deploy" / "veil.toml.example"

        def comparable(config: Config) -> Config:
            # The file writes two thirds as 0.6667.
            tls = attrs.evolve(config.tls, renew_fraction=round(config.tls.renew_fraction, 4))
            return attrs.evolve(config, source=None, tls=tls)

        self.assertEqual(comparable(load(str(example), environ={})),
                         comparable(load(None, environ={})))
        text = example.read_text()
        for key in KEYS:
            section, _, name = key.name.rpartition(".")
            self.assertRegex(text, rf"(?m)^{name} *=", key.name)
            if section:
                self.assertIn(f"[{section}]", text, key.name)

    def test_every_key_has_an_environment_name(self) -> None:
        """Each key maps to VEIL_ plus its dotted name in capitals."""
        names = {key.name: key.env for key in KEYS}
        self.assertEqual(names["database.url"], "VEIL_DATABASE_URL")
        self.assertEqual(names["data_dir"], "VEIL_DATA_DIR")
        self.assertEqual(names["edge.port"], "VEIL_EDGE_PORT")

    def test_every_key_reaches_the_config(self) -> None:
        """
        Each declared key is read by exactly one field: a section's field
        or one of the top-level ones; no field reads a key not declared.
        """
        read = ["data_dir", "dashboard.host", "edge.origin_ca_bundle"]
        for name, cls in SECTIONS:
            read.extend(section_keys(cls, name).values())
        self.assertEqual(sorted(read), sorted(key.name for key in KEYS))

    def test_every_section_is_a_config_field(self) -> None:
        """The sections built are fields of L{Config} holding that class."""
        fields = attrs.fields_dict(Config)
        for name, cls in SECTIONS:
            self.assertIn(name, fields)
            self.assertIsInstance(getattr(load(None, environ={}), name), cls)

    def test_empty_github_urls_keep_the_defaults(self) -> None:
        """An empty github.base_url or github.api_url means GitHub's own address."""
        config = load(None, environ={"VEIL_GITHUB_BASE_URL": "", "VEIL_GITHUB_API_URL": " "})
        self.assertEqual(config.github.base_url, "https://github.com")
        self.assertEqual(config.github.api_url, "https://api.github.com")

    def test_paths_are_paths(self) -> None:
        """The optional path keys come out as L{Path}, or L{None} when empty."""
        config = load(None, environ={"VEIL_SMTP_CA_BUNDLE": "ca.pem",
                                     "VEIL_EMBEDDED_BIN_DIR": "/usr/lib/postgresql/15/bin"})
        self.assertEqual(config.smtp.ca_bundle, Path("ca.pem"))
        self.assertEqual(config.embedded.bin_dir, Path("/usr/lib/postgresql/15/bin"))
        self.assertIsNone(config.acme.ca_bundle)
        self.assertIsNone(config.origin_ca_bundle)


class FileTests(SynchronousTestCase):
    """Values come from a TOML file, and bad ones are refused with the key named."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_values_from_file(self) -> None:
        """Sections map to dotted keys."""
        path = self.write(
            'data_dir = "/var/lib/veil"\n[edge]\naddress = "0.0.0.0"\nport = 443\n'
            '[database]\nurl = "postgresql://veil@db/veil"\npool_max = 10\n'
        )
        config = load(path, environ={})
        self.assertEqual(config.data_dir, Path("/var/lib/veil"))
        self.assertEqual((config.edge.address, config.edge.port), ("0.0.0.0", 443))
        self.assertEqual(config.database.url, "postgresql://veil@db/veil")
        self.assertEqual(config.database.pool_max, 10)
        self.assertFalse(config.uses_embedded_database)

    def test_port_out_of_range(self) -> None:
        """A port of 70000 is refused, naming the key and the file."""
        path = self.write("[edge]\nport = 70000\n")
        e = self.assertRaises(ConfigError, load, path, {})
        self.assertEqual(e.key, "edge.port")
        self.assertEqual(e.path, path)
        self.assertIn("70000", str(e))
        self.assertIn("edge.port", str(e))

    def test_wrong_type(self) -> None:
        """A string where a number is wanted names the key."""
        path = self.write('[dashboard]\nport = "eighty"\n')
        e = self.assertRaises(ConfigError, load, path, {})
        self.assertEqual(e.key, "dashboard.port")

    def test_boolean_is_not_a_port(self) -> None:
        """TOML true is not accepted as a number."""
        e = self.assertRaises(ConfigError, load, self.write("[http]\nport = true\n"), {})
        self.assertEqual(e.key, "http.port")

    def test_unknown_key(self) -> None:
        """A misspelt key is an error, not silently ignored."""
        e = self.assertRaises(ConfigError, load, self.write("[edge]\nprot = 443\n"), {})
        self.assertEqual(e.key, "edge.prot")
        self.assertIn("unknown", e.reason)

    def test_bad_address(self) -> None:
        """A listening address must be an IP address."""
        e = self.assertRaises(ConfigError, load, self.write('[edge]\naddress = "nowhere"\n'), {})
        self.assertEqual(e.key, "edge.address")

    def test_bad_database_url(self) -> None:
        """A database URL must look like a PostgreSQL URL or libpq string."""
        e = self.assertRaises(ConfigError, load, self.write('[database]\nurl = "mysql://x"\n'), {})
        self.assertEqual(e.key, "database.url")

    def test_not_toml(self) -> None:
        """A file that is not TOML is reported as such."""
        e = self.assertRaises(ConfigError, load, self.write("[edge\nport = 1\n"), {})
        self.assertIn("not valid TOML", e.reason)

    def test_missing_file(self) -> None:
        """A configured file that does not exist is an error."""
        e = self.assertRaises(ConfigError, load, "/nonexistent/veil.toml", {})
        self.assertIn("no such file", e.reason)

    def test_same_port_twice(self) -> None:
        """Two listeners on the same address and port are refused."""
        e = self.assertRaises(ConfigError, load, self.write("[http]\nport = 8443\n"), {})
        self.assertEqual(e.key, "http.port")

    def test_pool_bounds(self) -> None:
        """pool_min may not exceed pool_max."""
        path = self.write("[database]\npool_min = 8\npool_max = 4\n")
        e = self.assertRaises(ConfigError, load, path, {})
        self.assertEqual(e.key, "database.pool_min")

    def test_bad_hostname(self) -> None:
        """The dashboard host must be a valid DNS name."""
        e = self.assertRaises(ConfigError, load, self.write('[dashboard]\nhost = "a b"\n'), {})
        self.assertEqual(e.key, "dashboard.host")


class EnvironmentTests(SynchronousTestCase):
    """VEIL_* variables override the file, and are validated the same way."""

    def test_overrides_file(self) -> None:
        """The environment wins over the file."""
        path = self.mktemp()
        Path(path).write_text("[edge]\nport = 443\n")
        config = load(path, environ={"VEIL_EDGE_PORT": "9443", "VEIL_DATA_DIR": "/srv/veil",
                                     "VEIL_DATABASE_URL": "host=/run/pg dbname=veil"})
        self.assertEqual(config.edge.port, 9443)
        self.assertEqual(config.data_dir, Path("/srv/veil"))
        self.assertEqual(config.database.url, "host=/run/pg dbname=veil")

    def test_bad_environment_value(self) -> None:
        """A bad value in the environment names the variable and the key."""
        e = self.assertRaises(ConfigError, load, None, {"VEIL_DASHBOARD_PORT": "70000"})
        self.assertEqual(e.key, "dashboard.port")
        self.assertIn("VEIL_DASHBOARD_PORT", str(e))

    def test_empty_database_url_means_embedded(self) -> None:
        """VEIL_DATABASE_URL set to nothing selects the embedded cluster."""
        self.assertTrue(load(None, {"VEIL_DATABASE_URL": ""}).uses_embedded_database)

    def test_unknown_variable(self) -> None:
        """A misspelt VEIL_ variable is an error."""
        e = self.assertRaises(ConfigError, load, None, {"VEIL_DATABSE_URL": "x"})
        self.assertEqual(e.key, "VEIL_DATABSE_URL")

    def test_seconds(self) -> None:
        """Durations accept decimal strings and refuse garbage."""
        config = load(None, {"VEIL_DATABASE_CONNECT_TIMEOUT": "1.5"})
        self.assertEqual(config.database.connect_timeout, 1.5)
        e = self.assertRaises(ConfigError, load, None, {"VEIL_DATABASE_CONNECT_TIMEOUT": "soon"})
        self.assertEqual(e.key, "database.connect_timeout")


class DnsKeysTests(SynchronousTestCase):
    """The dns.* keys of onboarding: resolvers, what sites point at, CAA names, time-outs."""

    def test_defaults(self) -> None:
        """By default: the system's resolvers, nothing to point at, CAA names from tls.mode."""
        dns = load(None, environ={}).dns
        self.assertEqual((dns.resolvers, dns.proxy_cname, dns.proxy_addresses,
                          dns.caa_identifiers), ((), None, (), ()))
        self.assertEqual((dns.timeout, dns.attempts, dns.check_interval), (2.0, 2, 10.0))

    def test_from_environment(self) -> None:
        """VEIL_DNS_* values are parsed: host:port lists, lower-case names, short addresses."""
        dns = load(None, environ={
            "VEIL_DNS_RESOLVERS": "127.0.0.1:5353, [2001:db8::53]:53,10.0.0.2, 2001:db8::54",
            "VEIL_DNS_PROXY_CNAME": "Edge.Veil.Example.",
            "VEIL_DNS_PROXY_ADDRESSES": "198.51.100.7, 2001:0db8::0007",
            "VEIL_DNS_CAA_IDENTIFIERS": "LetsEncrypt.org",
            "VEIL_DNS_TIMEOUT": "0.5", "VEIL_DNS_ATTEMPTS": "3",
        }).dns
        self.assertEqual(dns.resolvers, (("127.0.0.1", 5353), ("2001:db8::53", 53),
                                         ("10.0.0.2", 53), ("2001:db8::54", 53)))
        self.assertEqual(dns.proxy_cname, "edge.veil.example")
        self.assertEqual(dns.proxy_addresses, ("198.51.100.7", "2001:db8::7"))
        self.assertEqual(dns.caa_identifiers, ("letsencrypt.org",))
        self.assertEqual((dns.timeout, dns.attempts), (0.5, 3))

    def test_toml_lists(self) -> None:
        """In the file, the lists may also be TOML arrays."""
        path = self.mktemp()
        Path(path).write_text('[dns]\nresolvers = ["127.0.0.1:5353"]\n'
                              'proxy_addresses = ["198.51.100.7"]\n')
        dns = load(path, environ={}).dns
        self.assertEqual((dns.resolvers, dns.proxy_addresses),
                         ((("127.0.0.1", 5353),), ("198.51.100.7",)))

    def test_bad_values(self) -> None:
        """Each bad dns.* value stops start-up naming its key and saying what is wrong."""
        cases = [
            ("VEIL_DNS_RESOLVERS", "dns.example.net:53", "dns.resolvers", "IP address"),
            ("VEIL_DNS_RESOLVERS", "127.0.0.1:99999", "dns.resolvers", "1 to 65535"),
            ("VEIL_DNS_RESOLVERS", "[fe80::1%eth0]:53", "dns.resolvers", "IP address"),
            ("VEIL_DNS_RESOLVERS", "[2001:db8::1", "dns.resolvers", "[2001:db8::53]:53"),
            ("VEIL_DNS_PROXY_CNAME", "edge veil", "dns.proxy_cname", "not a valid host name"),
            ("VEIL_DNS_PROXY_CNAME", "198.51.100.7", "dns.proxy_cname", "dns.proxy_addresses"),
            ("VEIL_DNS_PROXY_ADDRESSES", "198.51.100", "dns.proxy_addresses", "not an IPv4"),
            ("VEIL_DNS_CAA_IDENTIFIERS", "letsencrypt", "dns.caa_identifiers", "domain name"),
            ("VEIL_DNS_TIMEOUT", "0", "dns.timeout", "out of range"),
            ("VEIL_DNS_ATTEMPTS", "9", "dns.attempts", "out of range"),
            ("VEIL_DNS_CHECK_INTERVAL", "soon", "dns.check_interval", "not a number"),
        ]
        for variable, value, key, reason in cases:
            e = self.assertRaises(ConfigError, load, None, {variable: value})
            self.assertEqual(e.key, key, value)
            self.assertIn(reason, e.reason, value)
