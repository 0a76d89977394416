"""
The proxy's configuration keys (C{proxy.*}, C{waf.inspect_body_limit}) and
how L{veil.proxy.setup.make_proxy} applies them.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from veil.config import load
from veil.errors import ConfigError
from veil.metrics import Registry
from veil.proxy.origins import OriginPolicy
from veil.proxy.setup import make_proxy, via_name


class KeyTests(SynchronousTestCase):
    """The keys' defaults, overrides and checks."""

    def test_defaults(self) -> None:
        """The embedded default's values."""
        proxy = load(None, {}).proxy
        self.assertEqual(
            (proxy.allow_private_origins, proxy.origin_pool_size, proxy.max_client_requests,
             proxy.body_budget, proxy.body_min_rate, proxy.body_grace, proxy.body_timeout,
             proxy.send_timeout, proxy.via_name, proxy.inspect_body_limit),
            (True, 256, 128, 64 * 1024 * 1024, 1024, 10.0, 30.0, 60.0, None, 65536))

    def test_environment(self) -> None:
        """Every key can be set from the environment."""
        proxy = load(None, {"VEIL_PROXY_ORIGIN_POOL_SIZE": "8",
                            "VEIL_PROXY_MAX_CLIENT_REQUESTS": "4",
                            "VEIL_PROXY_BODY_MIN_RATE": "0", "VEIL_PROXY_VIA_NAME": "edge-1",
                            "VEIL_WAF_INSPECT_BODY_LIMIT": "0"}).proxy
        self.assertEqual((proxy.origin_pool_size, proxy.max_client_requests, proxy.body_min_rate,
                          proxy.via_name, proxy.inspect_body_limit), (8, 4, 0, "edge-1", 0))

    def test_bad_values(self) -> None:
        """Bad values stop the load with the key named."""
        for env, key in (({"VEIL_PROXY_ORIGIN_POOL_SIZE": "0"}, "proxy.origin_pool_size"),
                         ({"VEIL_PROXY_ALLOW_PRIVATE_ORIGINS": "maybe"},
                          "proxy.allow_private_origins"),
                         ({"VEIL_PROXY_VIA_NAME": "two words"}, "proxy.via_name"),
                         ({"VEIL_PROXY_BODY_BUDGET": "1000"}, "proxy.body_budget"),
                         ({"VEIL_WAF_INSPECT_BODY_LIMIT": "2000000"}, "waf.inspect_body_limit")):
            with self.assertRaises(ConfigError) as caught:
                load(None, env)
            self.assertIn(key, str(caught.exception))


class SetupTests(SynchronousTestCase):
    """make_proxy builds the pool and the factory the configuration describes."""

    def test_applied(self) -> None:
        """Pool size, per-client cap, budget, rates, time-outs, hold and Via come from the keys."""
        config = load(None, {"VEIL_PROXY_ORIGIN_POOL_SIZE": "8", "VEIL_PROXY_VIA_NAME": "edge-1",
                             "VEIL_PROXY_MAX_CLIENT_REQUESTS": "4",
                             "VEIL_PROXY_BODY_BUDGET": "100000",
                             "VEIL_WAF_INSPECT_BODY_LIMIT": "1000"})
        policy = OriginPolicy.from_config(config)
        pool, factory = make_proxy(config, MemoryReactorClock(), {}.get, lambda row: None,
                                   Registry(), policy=policy)
        self.assertEqual((pool.max_per_origin, factory.client_requests, factory.budget.capacity,
                          factory.inspect_body_limit(None), factory.via),
                         (8, 4, 100000, 1000, b"edge-1"))
        self.assertEqual((factory.body_timeout, factory.body_min_rate, factory.body_grace,
                          factory.send_timeout), (30.0, 1024.0, 10.0, 60.0))

    def test_via_name(self) -> None:
        """Without proxy.via_name, the name is the same for one data directory, and another for another."""
        one = via_name(load(None, {"VEIL_DATA_DIR": "/srv/a"}))
        self.assertEqual(one, via_name(load(None, {"VEIL_DATA_DIR": "/srv/a"})))
        self.assertNotEqual(one, via_name(load(None, {"VEIL_DATA_DIR": "/srv/b"})))
        self.assertRegex(one, r"^veil-[0-9a-f]{10}$")
