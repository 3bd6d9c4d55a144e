"""What ``sclp cluster`` shows: the registry as etcd holds it now, with each member's
lease, and every mismatch in it (seen from no endpoint in particular)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sclp.cluster.etcd import Etcd, EtcdError
from sclp.cluster.model import base, cluster_conflicts, describe, member_key, parse_records


def snapshot(
    urls: Sequence[str],
    prefix: str,
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 2.0,
) -> dict[str, Any]:
    """Read the registry under ``prefix``: a JSON-ready dict with the endpoint that
    answered, the revision, each member (its record, lease id, granted and remaining
    TTL, seconds since its last keep-alive, MACs announced per VNI) and the conflicts.
    Raises EtcdError (one line) when no URL answers, ValueError for a bad URL."""
    etcd = Etcd(urls, ca=ca, cert=cert, key=key, timeout=timeout)
    try:
        kvs, revision = etcd.range_prefix(base(prefix) + "/")
        records = parse_records(prefix, {kv.key: (kv.value, kv.create_revision) for kv in kvs})
        by_key = {kv.key: kv for kv in kvs}
        ttls: dict[int, tuple[int, int]] = {}
        members = []
        for name, member in sorted(records.members.items()):
            kv = by_key[member_key(prefix, name)]
            if kv.lease and kv.lease not in ttls:
                try:
                    ttls[kv.lease] = etcd.time_to_live(kv.lease)
                except EtcdError:
                    ttls[kv.lease] = (0, -1)
            granted, remaining = ttls.get(kv.lease, (0, -1))
            entry = describe(member)
            entry.update(
                lease_id=kv.lease or None,
                lease_granted_ttl=granted if kv.lease else None,
                lease_remaining_ttl=remaining if kv.lease else None,
                since_keepalive_s=granted - remaining if kv.lease and remaining >= 0 else None,
                create_revision=kv.create_revision,
                macs={
                    str(vni): len(macs)
                    for (vni, owner), macs in sorted(records.macs.items())
                    if owner == name
                },
            )
            members.append(entry)
        return {
            "endpoint": etcd.url,
            "prefix": prefix,
            "revision": revision,
            "members": members,
            "conflicts": cluster_conflicts(records),
        }
    finally:
        etcd.close()


def render(snap: dict[str, Any]) -> list[str]:
    """The lines ``sclp cluster`` prints for a :func:`snapshot`."""
    members = snap["members"]
    lines = [
        f"cluster {snap['prefix']} at {snap['endpoint']} (revision {snap['revision']}): "
        f"{len(members)} member{'s' if len(members) != 1 else ''}"
    ]
    header = ("NAME", "ADDRESS", "CARRIER", "NETWORKS", "LEASE TTL", "MACS")
    rows = [header]
    for m in members:
        carrier = f"udp:{m['sclp_udp_port']}" if m["carrier"] == "udp" else m["carrier"]
        networks = ",".join(f"{vni}:{p}" for vni, p in m["networks"].items()) or "-"
        if m["lease_id"] is None:
            lease = "no lease"
        elif m["lease_remaining_ttl"] < 0:
            lease = "expired"
        else:
            lease = (
                f"{m['lease_remaining_ttl']}/{m['lease_granted_ttl']} s "
                f"(kept alive {m['since_keepalive_s']} s ago)"
            )
        macs = sum(m["macs"].values())
        rows.append((m["name"], m["address"], carrier, networks, lease, str(macs)))
    if members:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for conflict in snap["conflicts"]:
        lines.append(f"conflict: {conflict}")
    return lines
