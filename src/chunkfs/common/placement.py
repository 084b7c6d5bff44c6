"""Placement attributes every role agrees on: failure-domain levels and tiers.

A file's ``failure-domain=`` and ``tier=`` are checked against these by the
master (which enforces them) and by the CLI (which names the choices before
sending), and a chunk server's own tier by its configuration.
"""

#: Levels of `failure-domain=`, smallest first: two replicas of a chunk never share one while another has room.
FAILURE_DOMAINS = ("disk", "host", "rack", "row", "room")
DEFAULT_FAILURE_DOMAIN = "host"
#: Tiers are 0..MAX_TIER, so fast and slow disks can be pooled apart.
MAX_TIER = 3
