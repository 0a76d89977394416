"""
The web application firewall: the per-request pipeline and the in-memory
state it reads (DESIGN §6).  Everything here that runs per request is a
plain synchronous function over in-memory structures.
"""
