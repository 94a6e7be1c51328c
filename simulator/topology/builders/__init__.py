"""Topology builders: host builders (one server) and fabric builders (the network joining the hosts),
one module each, registered by name in ``base.HOST_BUILDERS`` and ``base.FABRIC_BUILDERS``."""
