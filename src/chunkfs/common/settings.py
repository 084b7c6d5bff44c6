"""Cluster settings: declared once, with defaults, bounds and a line of help each.

They live in the replicated store (``set_config`` command), so every MDS —
and the next master after a failover — uses the same values.  The master
checks a value here before proposing it; the store keeps text, and readers
fall back to the default for anything missing or (from a newer version)
unreadable.  Chunk servers get the settings that concern them in every
heartbeat reply, and the CLI shows these declarations in its help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from chunkfs.common.errors import InvalidArgument


@dataclass(slots=True, frozen=True)
class Setting:
    name: str
    default: float
    low: float
    high: float
    unit: str
    help: str
    integer: bool = False


#: Defaults in the spirit of Virtuozzo Storage: a silent chunk server stops
#: receiving new chunks after seconds and is declared offline — its replicas
#: re-created elsewhere — only after minutes, so a reboot does not start a
#: storm of copies.  Likewise a mount silent for minutes (stopped, cut off)
#: keeps the unlinked files it holds open.  Tests set seconds.
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("cs-inactive-timeout", 10.0, 1.0, 3600.0, "s",
            "silence after which a chunk server gets no new chunks"),
    Setting("cs-offline-timeout", 300.0, 2.0, 7 * 86400.0, "s",
            "silence after which a chunk server is offline and its replicas are re-created elsewhere"),
    Setting("session-timeout", 600.0, 10.0, 7 * 86400.0, "s",
            "silence after which a mount is taken for dead and the unlinked files it held open are freed"),
    Setting("replication-rate", 64.0, 0.1, 10000.0, "MiB/s",
            "bandwidth one chunk server spends fetching replicas (healing, rebalancing)"),
    Setting("replication-per-cs", 2, 1, 64, "copies",
            "copies one chunk server takes part in at once (as source or target)", integer=True),
    Setting("replication-max", 16, 1, 1024, "copies",
            "copies in flight in the whole cluster", integer=True),
    Setting("scrub-rate", 4.0, 0.01, 10000.0, "MiB/s",
            "bandwidth one chunk server spends re-reading its replicas to verify checksums"),
    Setting("scrub-interval", 7 * 86400.0, 1.0, 365 * 86400.0, "s",
            "a chunk server starts a new pass over its replicas this long after the last one began"),
    Setting("rebalance-band", 10.0, 1.0, 100.0, "%",
            "servers whose used space differs from the cluster average by more than this are rebalanced"),
    Setting("event-log-max", 100_000, 100, 100_000_000, "events",
            "events the cluster keeps (`chunkfs get-event`); older ones are deleted", integer=True),
    Setting("event-log-days", 90.0, 1.0, 3650.0, "days",
            "events older than this are deleted"),
)}

#: Settings chunk servers need (sent in heartbeat replies).
CS_SETTINGS = ("replication-rate", "scrub-rate", "scrub-interval")


def shown(value: float) -> str:
    """A setting's value as people write it: 31536000, not 3.1536e+07 (an operator probe); 0.1 as 0.1."""
    return str(int(value)) if value == int(value) else f"{value:g}"


def parse_value(name: str, text: str) -> float:
    """Check one ``name=value`` against its declaration; the error names the setting and its bounds."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise InvalidArgument(f"unknown setting {name!r}; known: {', '.join(sorted(SETTINGS))}")
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):  # (inf and nan parse as floats, and int() of them fails)
        raise InvalidArgument(f"{name}: {text!r} is not a finite number")
    if setting.integer and value != int(value):
        raise InvalidArgument(f"{name}: must be a whole number")
    if not setting.low <= value <= setting.high:
        raise InvalidArgument(f"{name}: must be between {shown(setting.low)} and {shown(setting.high)} {setting.unit}")
    return value


def effective(stored: dict[str, str]) -> dict[str, float]:
    """Every setting's value: the stored one where valid, else the default."""
    out: dict[str, float] = {}
    for name, setting in SETTINGS.items():
        try:
            out[name] = parse_value(name, stored[name])
        except (KeyError, InvalidArgument):
            out[name] = setting.default
        if setting.integer:
            out[name] = int(out[name])
    return out


def check_update(current: dict[str, float], values: dict[str, Any]) -> dict[str, str]:
    """Validate a set of changes together (cross-setting rules too); returns the text to store."""
    if not values:
        raise InvalidArgument("nothing to set: give key=value pairs")
    if len(values) > len(SETTINGS):
        raise InvalidArgument("too many settings at once")
    parsed = {}
    for name, text in values.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise InvalidArgument("settings are key=value text pairs")
        parsed[name] = parse_value(name, text)
    merged = {**current, **parsed}
    if merged["cs-offline-timeout"] <= merged["cs-inactive-timeout"]:
        raise InvalidArgument(
            f"cs-offline-timeout ({shown(merged['cs-offline-timeout'])} s) must be longer than "
            f"cs-inactive-timeout ({shown(merged['cs-inactive-timeout'])} s)"
        )
    return {name: str(int(value)) if value == int(value) else repr(value) for name, value in parsed.items()}
