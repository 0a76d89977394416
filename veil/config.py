"""
Veil's configuration: one TOML file plus C{VEIL_*} environment overrides.

Every key is declared once in L{KEYS}, with its type, default and check.
L{load} reads the file, applies the environment, validates everything and
returns a frozen L{Config}, or raises L{ConfigError} naming the key.  With
no file and no environment, the result is the embedded default: loopback
ports, a private PostgreSQL cluster and data in C{./veil-data}.

Environment overrides are named after the dotted key: C{edge.port} is
C{VEIL_EDGE_PORT}, C{database.url} is C{VEIL_DATABASE_URL}, and the
top-level C{data_dir} is C{VEIL_DATA_DIR}.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from veil.errors import ConfigError

# -- value parsers --------------------------------------------------------
# Each takes the raw value (from TOML, or a string from the environment)
# and returns the checked value or raises ValueError with the reason.


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true/false")
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise ValueError(f"{value!r} is not a whole number") from None
        if not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low}-{high})")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a number of seconds") from None
        if not isinstance(value, (int, float)):
            raise ValueError(f"must be a number of seconds, not {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low}-{high} seconds)")
        return float(value)

    return parse


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"{value!r} is not true or false")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    return value


def _optional_text(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


def _address(value: object) -> str:
    text = _text(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    return text


def _path(value: object) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if "\x00" in text:
        raise ValueError("must not contain NUL")
    return text


def _optional_path(value: object) -> Path | None:
    text = _text(value).strip()
    return Path(_path(text)) if text else None


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_count(value: object) -> int:
    """C{auto} (one process per usable CPU) or a whole number of processes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return cpu_count()
    try:
        return _integer(1, 512)(value)
    except ValueError as e:
        raise ValueError(f"{e}; give a number of processes or auto") from None


def _database_url(value: object) -> str | None:
    text = _text(value).strip()
    if not text:
        return None
    if not (text.startswith(("postgresql://", "postgres://")) or "=" in text):
        raise ValueError(
            "must be a postgresql:// URL or a libpq key=value connection string"
        )
    return text


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _optional_hostname(value: object) -> str | None:
    text = _text(value).strip().lower().rstrip(".")
    if not text:
        return None
    if not _HOSTNAME.match(text):
        raise ValueError(f"{text!r} is not a valid host name")
    return text


def _items(value: object) -> list[str]:
    """A TOML list, or a comma-separated string, as its non-empty items."""
    items = value if isinstance(value, list) else _text(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _resolvers(value: object) -> tuple[tuple[str, int], ...]:
    """
    DNS resolvers as C{host:port} (the port defaults to 53; an IPv6 address
    with a port goes in brackets, C{[2001:db8::53]:53}); empty: the
    system's, from C{/etc/resolv.conf}.
    """
    servers = []
    for item in _items(value):
        host, port = item, "53"
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{item!r}: write an IPv6 resolver as [2001:db8::53]:53")
            port = rest[1:] or "53"
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        try:
            if "%" in host:
                raise ValueError(host)
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r}: a resolver is an IP address with an optional"
                             " port, like 127.0.0.1:5353") from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r}: the port must be a number from 1 to 65535")
        servers.append((address.compressed, int(port)))
    return tuple(servers)


def _addresses(value: object) -> tuple[str, ...]:
    addresses = []
    for item in _items(value):
        try:
            addresses.append(ipaddress.ip_address(item).compressed)
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 address") from None
    return tuple(dict.fromkeys(addresses))


def _hostnames(value: object) -> tuple[str, ...]:
    names = []
    for item in _items(value):
        name = _optional_hostname(item)
        if name is None or "." not in name:
            raise ValueError(f"{item!r} is not a domain name like letsencrypt.org")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _fraction(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low}-{high})")
        return float(value)

    return parse


def _optional_https_url(value: object) -> str | None:
    text = _text(value).strip()
    if not text:
        return None
    if not text.startswith("https://") or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an https:// URL")
    return text


def _optional_email(value: object) -> str | None:
    text = _text(value).strip()
    if not text:
        return None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise ValueError(f"{text!r} is not an e-mail address")
    return text


def _optional_url(value: object) -> str | None:
    """
    An C{https://} URL, or C{http://} on a loopback host (tests, a local
    mail or identity server); no path beyond C{/}, no query.
    """
    text = _text(value).strip().rstrip("/")
    if not text:
        return None
    match = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[^\s?#]*)?", text)
    if match is None:
        raise ValueError(f"{text!r} is not an http(s):// URL")
    if match.group(1) == "http" and not _is_loopback(match.group(2)):
        raise ValueError(f"{text!r}: plain http:// is allowed only for a loopback host")
    return text


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _optional_host(value: object) -> str | None:
    text = _text(value).strip().lower().rstrip(".")
    if not text:
        return None
    try:
        ipaddress.ip_address(text.strip("[]"))
        return text.strip("[]")
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def _challenges(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else _text(value).split(",")
    names = tuple(str(item).strip().lower() for item in items if str(item).strip())
    if not names:
        raise ValueError("must name at least one challenge type")
    for name in names:
        if name not in ("tls-alpn-01", "http-01"):
            raise ValueError(f"{name!r} is not a supported challenge (tls-alpn-01, http-01)")
    return names


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return text

    return parse


def _auto_boolean(value: object) -> bool | None:
    """C{auto} (L{None}: decided from the rest of the configuration), or true/false."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return _boolean(value)
    except ValueError:
        raise ValueError(f"{value!r} is not true, false or auto") from None


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def _optional_token(value: object) -> str | None:
    text = _text(value).strip()
    if not text:
        return None
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not an HTTP token (letters, digits, -._~ ...; at most 64)")
    return text


@attrs.frozen
class Key:
    """One configuration key: its dotted name, parser and default."""

    name: str
    parse: Callable[[object], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "VEIL_" + self.name.replace(".", "_").upper()


KEYS: tuple[Key, ...] = (
    Key("data_dir", _path, "./veil-data", "where Veil keeps its state"),
    Key("edge.address", _address, "127.0.0.1", "TLS edge listening address"),
    Key("edge.port", _integer(0, 65535), 8443, "TLS edge port (production: 443)"),
    Key("edge.origin_ca_bundle", _optional_path, "",
        "PEM roots trusted for https origins, besides the system's"),
    Key("http.address", _address, "127.0.0.1", "plain-HTTP listening address"),
    Key("http.port", _integer(0, 65535), 8080, "plain-HTTP port (production: 80)"),
    Key("dashboard.address", _address, "127.0.0.1", "dashboard listening address"),
    Key("dashboard.port", _integer(0, 65535), 8081, "dashboard port"),
    Key("dashboard.host", _optional_hostname, "", "the dashboard's public host name"),
    Key("database.url", _database_url, "", "PostgreSQL URL; empty for the embedded cluster"),
    Key("database.pool_min", _integer(1, 100), 2, "connections kept open"),
    Key("database.pool_max", _integer(1, 200), 6, "connections at most (and DB threads)"),
    Key("database.connect_timeout", _seconds(0.1, 600), 5.0, "wait for a connection at most"),
    Key("database.statement_timeout", _seconds(0, 3600), 30.0, "per statement, 0 = none"),
    Key("embedded.bin_dir", _optional_path, "", "PostgreSQL binaries for the embedded cluster"),
    Key("embedded.run_as", _optional_text, "", "user the embedded cluster runs as when Veil is root"),
    Key("tls.mode", _choice("internal", "acme"), "internal",
        "internal: the local CA signs; acme: an ACME CA issues"),
    Key("tls.key_type", _choice("ecdsa-p256", "rsa-2048"), "ecdsa-p256", "certificate keys"),
    Key("tls.renew_fraction", _fraction(0.1, 0.95), 2 / 3, "renew at this part of the lifetime"),
    Key("tls.renewal_interval", _seconds(1, 86400), 3600.0, "how often renewals are looked for"),
    Key("tls.cache_size", _integer(10, 10_000_000), 10000, "certificates kept in memory"),
    Key("tls.issuance_per_minute", _integer(1, 100_000), 60, "new certificates per minute at most"),
    Key("tls.failure_backoff", _seconds(1, 86400), 60.0, "wait after a failed issuance (doubles)"),
    Key("tls.internal_lifetime_days", _integer(1, 397), 30, "lifetime of internal certificates"),
    Key("tls.secrets_key", _optional_text, "",
        "base64 key sealing private keys at rest (default: data_dir/secrets.key)"),
    Key("acme.directory_url", _optional_https_url, "", "the ACME CA's directory"),
    Key("acme.email", _optional_email, "", "contact address for the ACME account"),
    Key("acme.agree_tos", _boolean, False, "agree to the ACME CA's terms of service"),
    Key("acme.ca_bundle", _optional_path, "", "PEM file trusted for the ACME CA (default: system)"),
    Key("acme.eab_kid", _optional_text, "", "external account binding key id"),
    Key("acme.eab_hmac_key", _optional_text, "", "external account binding key (base64url)"),
    Key("acme.challenges", _challenges, "tls-alpn-01,http-01", "challenge types, preferred first"),
    Key("dns.resolvers", _resolvers, "",
        "DNS resolvers for onboarding checks, host:port, comma-separated (default: the"
        " system's, from /etc/resolv.conf)"),
    Key("dns.proxy_cname", _optional_hostname, "",
        "the host name sites point their CNAME at (this Veil's public name)"),
    Key("dns.proxy_addresses", _addresses, "",
        "this Veil's public IPv4/IPv6 addresses, for apex domains (A/AAAA)"),
    Key("dns.caa_identifiers", _hostnames, "",
        "CAA issuer names of the certificate authority (default: from tls.mode and"
        " acme.directory_url)"),
    Key("dns.timeout", _seconds(0.1, 30), 2.0, "seconds to wait for one DNS answer"),
    Key("dns.attempts", _integer(1, 5), 2, "tries per resolver before the next one"),
    Key("dns.check_interval", _seconds(1, 3600), 10.0,
        "how often the DNS worker looks for pending sites that are due"),
    Key("processes.workers", process_count, 1,
        "Veil processes sharing the ports: a number, or auto for one per CPU"),
    Key("processes.stop_timeout", _seconds(1, 3600), 30.0,
        "how long a stopping process may drain before it is killed"),
    Key("workers.partition_retention_months", _integer(1, 120), 6,
        "request_log months kept"),
    Key("workers.partition_interval", _seconds(60, 7 * 86400), 86400.0,
        "how often partition maintenance runs"),
    Key("workers.session_cleanup_interval", _seconds(10, 86400), 3600.0,
        "how often expired sessions are deleted"),
    Key("auth.public_url", _optional_url, "",
        "the dashboard's URL as users reach it, for links in mail and the GitHub callback"
        " (default: https://dashboard.host, else the dashboard port's address)"),
    Key("auth.session_idle_timeout", _seconds(60, 30 * 86400), 1800.0,
        "a session unused this long ends (seconds)"),
    Key("auth.session_lifetime", _seconds(300, 365 * 86400), 43200.0,
        "a session ends this long after sign-in, used or not (seconds)"),
    Key("auth.magic_links", _boolean, True, "allow sign-in by a link sent by e-mail"),
    Key("github.client_id", _optional_text, "", "GitHub OAuth app client id (sign-in with GitHub)"),
    Key("github.client_secret", _optional_text, "", "GitHub OAuth app client secret"),
    Key("github.base_url", _optional_url, "https://github.com", "GitHub's web address"),
    Key("github.api_url", _optional_url, "https://api.github.com", "GitHub's API address"),
    Key("smtp.host", _optional_host, "", "mail server; empty: mail goes to data_dir/outbox"),
    Key("smtp.port", _integer(1, 65535), 587, "mail server port"),
    Key("smtp.starttls", _boolean, True,
        "require STARTTLS (false is allowed only for a loopback mail server)"),
    Key("smtp.username", _optional_text, "", "mail server user name (empty: no AUTH)"),
    Key("smtp.password", _optional_text, "", "mail server password"),
    Key("smtp.sender", _optional_email, "", "From address of Veil's mail"),
    Key("smtp.ca_bundle", _optional_path, "", "PEM roots trusted for the mail server"
        " (default: the system's)"),
    Key("smtp.timeout", _seconds(1, 600), 30.0, "give up on the mail server after this long"),
    # The proxy (issue 10).
    Key("proxy.allow_private_origins", _auto_boolean, "auto",
        "origins on loopback and private addresses; auto: only when Veil listens on loopback"),
    Key("proxy.origin_pool_size", _integer(1, 100_000), 256,
        "connections per origin at most, per process"),
    Key("proxy.max_client_requests", _integer(1, 1_000_000), 128,
        "requests one client address may have at origins at once, per process (429 beyond)"),
    Key("proxy.body_budget", _integer(65536, 1 << 40), 64 * 1024 * 1024,
        "bytes of request bodies held at most before they go to origins, per process"),
    Key("proxy.body_min_rate", _integer(0, 1 << 30), 1024,
        "bytes/s a request body must average after proxy.body_grace (0: no minimum)"),
    Key("proxy.body_grace", _seconds(0, 3600), 10.0, "seconds before the minimum rate counts"),
    Key("proxy.body_timeout", _seconds(1, 3600), 30.0, "seconds a request body may send nothing"),
    Key("proxy.send_timeout", _seconds(1, 3600), 60.0,
        "seconds a client may take none of a response"),
    Key("proxy.via_name", _optional_token, "",
        "this Veil's name in Via (the same on every node of a cluster; default: from the host)"),
    Key("waf.inspect_body_limit", _integer(0, 1024 * 1024), 64 * 1024,
        "request body bytes held (and inspected) before an origin connection is taken"),
    Key("waf.enabled", _boolean, True,
        "the signature stage (false: IP decisions only, no rules compiled or run)"),
)

_BY_NAME = {key.name: key for key in KEYS}


@attrs.frozen
class Listen:
    """An address and port to listen on."""

    address: str
    port: int


@attrs.frozen
class DatabaseConfig:
    url: str | None
    pool_min: int
    pool_max: int
    connect_timeout: float
    statement_timeout: float


@attrs.frozen
class EmbeddedConfig:
    bin_dir: Path | None
    run_as: str | None


@attrs.frozen
class TlsConfig:
    mode: str
    key_type: str
    renew_fraction: float
    renewal_interval: float
    cache_size: int
    issuance_per_minute: int
    failure_backoff: float
    internal_lifetime_days: int
    secrets_key: str | None


@attrs.frozen
class AcmeConfig:
    directory_url: str | None
    email: str | None
    agree_tos: bool
    ca_bundle: Path | None
    eab_kid: str | None
    eab_hmac_key: str | None
    challenges: tuple[str, ...]


@attrs.frozen
class WorkersConfig:
    partition_retention_months: int
    partition_interval: float
    session_cleanup_interval: float


@attrs.frozen
class DnsConfig:
    """
    Onboarding by DNS.

    @ivar resolvers: C{(address, port)} pairs; empty for the system's.
    @ivar caa_identifiers: the CA's CAA issuer names as configured; empty
        for the default of C{tls.mode} (see L{veil.dns.caa.ca_identifiers}).
    """

    resolvers: tuple[tuple[str, int], ...] = ()
    proxy_cname: str | None = None
    proxy_addresses: tuple[str, ...] = ()
    caa_identifiers: tuple[str, ...] = ()
    timeout: float = 2.0
    attempts: int = 2
    check_interval: float = 10.0


@attrs.frozen
class ProxyConfig:
    """The proxy's keys (C{proxy.*}), and the C{waf.*} keys, which it applies."""

    allow_private_origins: bool = True
    origin_pool_size: int = 256
    max_client_requests: int = 128
    body_budget: int = 64 * 1024 * 1024
    body_min_rate: int = 1024
    body_grace: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    via_name: str | None = None
    inspect_body_limit: int = attrs.field(default=64 * 1024,
                                          metadata={"key": "waf.inspect_body_limit"})
    #: C{waf.enabled}: the WAF's signature stage runs.
    waf_enabled: bool = attrs.field(default=True, metadata={"key": "waf.enabled"})


@attrs.frozen
class ProcessesConfig:
    workers: int
    stop_timeout: float


@attrs.frozen
class AuthConfig:
    """Sign-in and sessions (C{auth.*})."""

    public_url: str | None = None
    session_idle_timeout: float = 1800.0
    session_lifetime: float = 43200.0
    magic_links: bool = True


@attrs.frozen
class GithubConfig:
    """Sign-in with GitHub (C{github.*}); off unless both client values are set."""

    client_id: str | None = None
    client_secret: str | None = None
    base_url: str = "https://github.com"
    api_url: str = "https://api.github.com"

    @property
    def enabled(self) -> bool:
        return bool(self.client_id and self.client_secret)


@attrs.frozen
class SmtpConfig:
    """Outgoing mail (C{smtp.*}); with no host, mail is written to C{data_dir/outbox}."""

    host: str | None = None
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = None
    sender: str | None = None
    ca_bundle: Path | None = None
    timeout: float = 30.0


@attrs.frozen
class Config:
    """The whole, validated configuration."""

    source: str | None
    data_dir: Path
    edge: Listen
    http: Listen
    dashboard: Listen
    dashboard_host: str | None
    database: DatabaseConfig
    embedded: EmbeddedConfig
    tls: TlsConfig
    acme: AcmeConfig
    workers: WorkersConfig
    processes: ProcessesConfig = ProcessesConfig(workers=1, stop_timeout=30.0)
    origin_ca_bundle: Path | None = None
    dns: DnsConfig = DnsConfig()
    auth: AuthConfig = AuthConfig()
    github: GithubConfig = GithubConfig()
    smtp: SmtpConfig = SmtpConfig()
    proxy: ProxyConfig = ProxyConfig()

    @property
    def uses_embedded_database(self) -> bool:
        return self.database.url is None


def _flatten(table: Mapping[str, Any], prefix: str, path: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + ".", path))
        else:
            flat[dotted] = value
    return flat


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "no such file") from None
    except PermissionError:
        raise ConfigError(path, "(file)", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, "(file)", "is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(file)", f"not valid TOML: {e}") from None
    return _flatten(raw, "", path)


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read, override and validate the configuration.

    @param path: a TOML file, or L{None} for the embedded defaults.
    @param environ: the environment to take C{VEIL_*} overrides from
        (C{os.environ} when L{None}).
    @raise ConfigError: for the first bad or unknown key, naming it.
    """
    environ = os.environ if environ is None else environ
    given = _read_file(path) if path is not None else {}
    for name in given:
        if name not in _BY_NAME:
            raise ConfigError(path, name, "unknown key")

    values: dict[str, Any] = {}
    for key in KEYS:
        source, raw = path, key.default
        if key.name in given:
            raw = given[key.name]
        if key.env in environ:
            source, raw = f"environment {key.env}", environ[key.env]
        try:
            values[key.name] = key.parse(raw)
        except ValueError as e:
            raise ConfigError(source, key.name, str(e)) from None

    known_env = {key.env for key in KEYS} | {"VEIL_CONFIG"}
    for name in environ:
        if name.startswith("VEIL_") and name not in known_env:
            raise ConfigError("environment", name, "unknown VEIL_ variable")

    if values["database.pool_min"] > values["database.pool_max"]:
        raise ConfigError(path, "database.pool_min", "is larger than database.pool_max")
    ports = {}
    for section in ("edge", "http", "dashboard"):
        listen = (values[f"{section}.address"], values[f"{section}.port"])
        if listen[1] and listen in ports:
            raise ConfigError(
                path, f"{section}.port",
                f"{listen[0]}:{listen[1]} is also used by {ports[listen]}.port"
            )
        ports[listen] = section

    if values["tls.mode"] == "acme":
        if values["acme.directory_url"] is None:
            raise ConfigError(path, "acme.directory_url", "is required when tls.mode is acme")
        if not values["acme.agree_tos"]:
            raise ConfigError(path, "acme.agree_tos",
                              "must be true to use an ACME CA (its terms of service)")
    if bool(values["acme.eab_kid"]) != bool(values["acme.eab_hmac_key"]):
        raise ConfigError(path, "acme.eab_hmac_key", "acme.eab_kid and acme.eab_hmac_key go together")
    if values["acme.eab_hmac_key"]:
        try:
            base64.urlsafe_b64decode(values["acme.eab_hmac_key"] + "==")
        except (ValueError, binascii.Error):
            raise ConfigError(path, "acme.eab_hmac_key", "is not base64url") from None
    if values["dns.proxy_cname"] is not None and re.fullmatch(r"[0-9.]+",
                                                              values["dns.proxy_cname"]):
        raise ConfigError(path, "dns.proxy_cname",
                          "is an IP address; a CNAME needs a host name (put addresses in"
                          " dns.proxy_addresses)")
    if values["tls.secrets_key"]:
        try:
            raw = base64.b64decode(values["tls.secrets_key"], validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(path, "tls.secrets_key", "must be 32 bytes in base64")

    if values["auth.session_idle_timeout"] > values["auth.session_lifetime"]:
        raise ConfigError(path, "auth.session_idle_timeout", "is longer than auth.session_lifetime")
    if bool(values["github.client_id"]) != bool(values["github.client_secret"]):
        raise ConfigError(path, "github.client_secret",
                          "github.client_id and github.client_secret go together")
    if values["smtp.host"] is not None:
        if not values["smtp.starttls"] and not _is_loopback(values["smtp.host"]):
            raise ConfigError(path, "smtp.starttls",
                              "may be false only for a mail server on loopback")
        if bool(values["smtp.username"]) != bool(values["smtp.password"]):
            raise ConfigError(path, "smtp.password", "smtp.username and smtp.password go together")
        if values["smtp.sender"] is None:
            raise ConfigError(path, "smtp.sender", "is required when smtp.host is set")

    # A derived default, settled before the sections are built.
    if values["proxy.allow_private_origins"] is None:
        # Reachable from this machine only, Veil's origins are on it too.
        values["proxy.allow_private_origins"] = all(
            ipaddress.ip_address(values[f"{section}.address"]).is_loopback
            for section in ("edge", "http"))

    return Config(
        source=path,
        data_dir=Path(values["data_dir"]).absolute(),
        dashboard_host=values["dashboard.host"],
        origin_ca_bundle=values["edge.origin_ca_bundle"],
        **{name: _section(cls, name, values) for name, cls in SECTIONS},
    )


#: The L{Config} fields built from a section of keys: field (and section)
#: name, and the attrs class holding that section's values.
SECTIONS: tuple[tuple[str, type], ...] = (
    ("edge", Listen),
    ("http", Listen),
    ("dashboard", Listen),
    ("database", DatabaseConfig),
    ("embedded", EmbeddedConfig),
    ("tls", TlsConfig),
    ("acme", AcmeConfig),
    ("workers", WorkersConfig),
    ("processes", ProcessesConfig),
    ("dns", DnsConfig),
    ("auth", AuthConfig),
    ("github", GithubConfig),
    ("smtp", SmtpConfig),
    ("proxy", ProxyConfig),
)


def section_keys(cls: type, section: str) -> dict[str, str]:
    """
    The key behind each field of a section class: C{<section>.<field>}, or
    the field's C{metadata["key"]} where it is named otherwise.
    """
    return {field.name: field.metadata.get("key", f"{section}.{field.name}")
            for field in attrs.fields(cls)}


def _section(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    """
    Build one section from the parsed values.  A key left empty (parsed to
    L{None}) where the class has a default other than L{None} keeps that
    default (C{github.base_url = ""} is GitHub's own address).
    """
    defaults = {field.name: field.default for field in attrs.fields(cls)}
    kwargs = {}
    for name, key in section_keys(cls, section).items():
        value = values[key]
        if value is None and defaults[name] not in (None, attrs.NOTHING):
            continue
        kwargs[name] = value
    return cls(**kwargs)
