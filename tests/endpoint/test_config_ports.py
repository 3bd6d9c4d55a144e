"""``[underlay] vxlan_port`` and ``geneve_port``: the classic tunnels' UDP ports
(defaults, range, and collisions with each other and with ``sclp_udp_port``)."""

from __future__ import annotations

import pytest

from sclp.endpoint.config import ConfigError, parse_config
from sclp.endpoint.nve import Endpoint
from sclp.wire.geneve import GENEVE_PORT
from sclp.wire.vxlan import VXLAN_PORT

# Line 5 is free for the keys under test; the networks use every UDP channel.
TEMPLATE = """\
name = "host1"
[underlay]
local = "10.0.0.1"
sclp_carrier = "udp"
{keys}
[[network]]
vni = 1
protocol = "vxlan"
tap = "tap1"
[[network]]
vni = 2
protocol = "geneve"
tap = "tap2"
[[network]]
vni = 3
protocol = "vxlan-sclp"
tap = "tap3"
"""


def _parse(keys: str, template: str = TEMPLATE) -> tuple[int, int]:
    underlay = parse_config(template.format(keys=keys)).underlay
    return underlay.vxlan_port, underlay.geneve_port


def _error(keys: str, template: str = TEMPLATE) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(template.format(keys=keys))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_iana_ports() -> None:
    assert _parse("") == (VXLAN_PORT, GENEVE_PORT) == (4789, 6081)


def test_kernel_default_port_is_accepted() -> None:
    assert _parse("vxlan_port = 8472") == (8472, 6081)
    assert _parse("vxlan_port = 8472\ngeneve_port = 6082") == (8472, 6082)
    assert _parse("geneve_port = 1\nvxlan_port = 65535") == (65535, 1)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("vxlan_port = 0", "underlay.vxlan_port (line 5): 0 is not a UDP port; use 1..65535"),
        ("vxlan_port = 65536", "underlay.vxlan_port (line 5): 65536 is not a UDP port"),
        ("geneve_port = -1", "underlay.geneve_port (line 5): -1 is not a UDP port"),
        ('vxlan_port = "8472"', "underlay.vxlan_port (line 5): expected an integer, got str"),
        ("geneve_port = true", "underlay.geneve_port (line 5): expected an integer, got a boolean"),
        ("vxlan_port = 8472.0", "underlay.vxlan_port (line 5): expected an integer, got float"),
    ],
)
def test_range_and_type_errors_name_the_line(keys: str, expected: str) -> None:
    assert expected in _error(keys)


def test_range_error_names_the_kernel_port() -> None:
    assert "8472 for a kernel device without dstport" in _error("vxlan_port = 0")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # Against a default: the written key is blamed, the default named as such.
        (
            "vxlan_port = 6081",
            "underlay.vxlan_port (line 5): 6081 is also underlay.geneve_port (its default)",
        ),
        (
            "geneve_port = 4789",
            "underlay.geneve_port (line 5): 4789 is also underlay.vxlan_port (its default)",
        ),
        (
            "vxlan_port = 7234",
            "underlay.vxlan_port (line 5): 7234 is also underlay.sclp_udp_port (its default)",
        ),
        (
            "sclp_udp_port = 6081",
            "underlay.sclp_udp_port (line 5): 6081 is also underlay.geneve_port (its default)",
        ),
        # Both written: the later line is blamed, the earlier one named.
        (
            "vxlan_port = 8472\ngeneve_port = 8472",
            "underlay.geneve_port (line 6): 8472 is also underlay.vxlan_port (line 5)",
        ),
        (
            "geneve_port = 8472\nvxlan_port = 8472",
            "underlay.vxlan_port (line 6): 8472 is also underlay.geneve_port (line 5)",
        ),
        (
            "sclp_udp_port = 9000\nvxlan_port = 9000",
            "underlay.vxlan_port (line 6): 9000 is also underlay.sclp_udp_port (line 5)",
        ),
    ],
)
def test_collisions_are_refused(keys: str, expected: str) -> None:
    message = _error(keys)
    assert expected in message
    assert "each tunnel needs its own UDP port" in message


def test_ports_of_unused_channels_may_coincide() -> None:
    """Only the ports the networks use are sockets: a VXLAN-only file may leave
    geneve_port anywhere, and sclp_udp_port matters only in the UDP carrier."""
    vxlan_only = TEMPLATE.split("[[network]]\nvni = 2")[0]
    assert _parse("geneve_port = 4789", vxlan_only) == (4789, 4789)
    assert _parse("vxlan_port = 7234", vxlan_only) == (7234, 6081)
    native = TEMPLATE.replace('sclp_carrier = "udp"', 'sclp_carrier = "ip"')
    assert _parse("vxlan_port = 7234", native) == (7234, 6081)
    with pytest.raises(ConfigError, match=r"is also underlay\.vxlan_port"):
        parse_config(native.format(keys="geneve_port = 4789"))


def test_stats_show_the_ports() -> None:
    """``sclp stats --json``'s underlay section (read from the configuration; an
    endpoint that has not started has no sockets yet)."""
    cfg = parse_config(TEMPLATE.format(keys="vxlan_port = 8472\ngeneve_port = 6082"))
    underlay = Endpoint(cfg).stats()["underlay"]
    assert (underlay["vxlan_port"], underlay["geneve_port"], underlay["sclp_udp_port"]) == (
        8472,
        6082,
        7234,
    )
