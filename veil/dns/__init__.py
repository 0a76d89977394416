"""
Onboarding by DNS: lookups on the reactor (L{veil.dns.resolver}), the
verification check and its report (L{veil.dns.check}), CAA (L{veil.dns.caa})
and the origin proposal (L{veil.dns.origin}).
"""
