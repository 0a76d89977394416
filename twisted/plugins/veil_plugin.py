"""The C{twistd veil} plugin: a pointer to L{veil.tap}, nothing else."""

from twisted.application.service import ServiceMaker

veil = ServiceMaker(
    "Veil",
    "veil.tap",
    "Veil edge proxy: on-demand TLS, reverse proxy, WAF and live dashboard.",
    "veil",
)
