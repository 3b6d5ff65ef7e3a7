"""The listener (Courier's couriertcpd): bind, fork per connection, limits, access rules, TLS.

A daemon builds a ListenerSpec from its config and calls
``serve(load)``, where ``load() -> (ListenerSpec, handler)`` is called at start
and again on SIGHUP. The handler runs in a forked child with a Connection and
returns when the session ends.
"""

from libcourier.tcpd.access import AccessDecision, AccessRules, load_access, parse_access
from libcourier.tcpd.connection import Connection, Handler, ListenerSpec
from libcourier.tcpd.listener import serve
from libcourier.tcpd.tls import make_self_signed, server_context

__all__ = [
    "AccessDecision",
    "AccessRules",
    "Connection",
    "Handler",
    "ListenerSpec",
    "load_access",
    "make_self_signed",
    "parse_access",
    "serve",
    "server_context",
]
