import pytest

from sclp.endpoint.config import ConfigError, Protocol, load_config, parse_config
from sclp.wire.sclp import Carrier

GOOD = """\
name = "host1"
[underlay]
local = "10.0.0.1"
mtu = 1500
sclp_carrier = "udp"
sclp_udp_port = 7300
[[network]]
vni = 42
protocol = "vxlan-sclp"
tap = "tap42"
namespace = "vm1"
address = "192.168.42.1/24"
mtu = 1500
peers = ["10.0.0.2"]
static = [{mac = "02:00:00:00:00:07", peer = "10.0.0.3"}]
[[network]]
vni = 43
protocol = "vxlan"
tap = "tap43"
peers = ["10.0.0.2", "fd00::2"]
"""


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD)
    assert cfg.name == "host1"
    assert cfg.control_socket == "/run/sclp/host1.sock"
    assert cfg.underlay.local == "10.0.0.1"
    assert cfg.underlay.sclp_carrier is Carrier.UDP  # enums from the parser onward
    assert cfg.underlay.sclp_udp_port == 7300
    assert not cfg.underlay.faults.enabled
    a, b = cfg.networks
    assert a.protocol is Protocol.VXLAN_SCLP and a.is_sclp
    assert (a.vni, a.protocol, a.tap, a.namespace, a.mtu) == (
        42,
        "vxlan-sclp",
        "tap42",
        "vm1",
        1500,
    )
    assert a.is_sclp and not b.is_sclp
    assert a.static[0].mac == bytes.fromhex("020000000007")
    assert b.peers == ("10.0.0.2", "fd00::2")
    assert b.mtu is None and b.address is None
    assert cfg.limits.reasm_timeout == 1.0
    assert cfg.limits.fdb_aging == 300.0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'protocol = "vxlan-sclp"',
            'protocol = "vxlan-sctp"',
            "network[0].protocol (line 9): unknown protocol",
        ),
        (
            'local = "10.0.0.1"',
            'local = "10.0.0.300"',
            "underlay.local (line 3): '10.0.0.300' is not",
        ),
        ("vni = 43", "vni = 42", "network[1].vni: 42 appears twice"),
        ('tap = "tap43"', 'tap = "tap42"', "network[1].tap: 'tap42' appears twice"),
        ("vni = 43", "vni = 16777216", "network[1].vni (line 17): 16777216 does not fit"),
        ('sclp_carrier = "udp"', 'sclp_carrier = "tcp"', "underlay.sclp_carrier (line 5)"),
        ("sclp_udp_port = 7300", "sclp_udp_port = 70000", "underlay.sclp_udp_port (line 6)"),
        ("mtu = 1500\nsclp", "mtu = 100\nsclp", "underlay.mtu (line 4): 100 is out of range"),
        ('address = "192.168.42.1/24"', 'address = "192.168.42.1"', "needs a prefix length"),
        ('tap = "tap43"', 'tap = "a/very/long/tap/name"', "network[1].tap (line 19)"),
        ('name = "host1"', 'name = "host 1"', "name (line 1): 'host 1' must be"),
        ('name = "host1"', "name = 7", "name (line 1): expected a string, got int"),
        ('peers = ["10.0.0.2"]', "peers = [1]", "network[0].peers (line 14)"),
        (
            "mtu = 1500\npeers",
            "mtu = 1500\nlocal = 1\npeers",
            "network[0].local (line 14): unknown key",
        ),
        ("[underlay]", '[underlay]\ncolour = "red"', "underlay.colour (line 3): unknown key"),
    ],
)
def test_errors_name_the_key_and_line(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace(old, new, 1))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_sections() -> None:
    with pytest.raises(ConfigError, match=r"^underlay: missing"):
        parse_config('name = "a"\n')
    with pytest.raises(ConfigError, match=r"^network: missing"):
        parse_config('name = "a"\n[underlay]\nlocal = "10.0.0.1"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("name = ")


def test_faults_validation() -> None:
    text = GOOD.replace("[[network]]", "[underlay.faults]\ndrop = 0.01\nseed = 7\n[[network]]", 1)
    cfg = parse_config(text)
    assert cfg.underlay.faults.enabled and cfg.underlay.faults.drop == 0.01
    with pytest.raises(
        ConfigError, match=r"underlay.faults.drop \(line 8\): 2.0 is not a fraction"
    ):
        parse_config(text.replace("drop = 0.01", "drop = 2"))


def test_load_config_reports_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    path = tmp_path / "ok.toml"
    path.write_text(GOOD)
    assert load_config(path).name == "host1"


def test_tuning_switches() -> None:
    assert parse_config(GOOD).tuning.rx_batch is True
    cfg = parse_config(
        GOOD.replace("[underlay]", "[tuning]\nrx_batch = false\ndeliver_gso = false\n[underlay]", 1)
    )
    assert (cfg.tuning.rx_batch, cfg.tuning.deliver_gso) == (False, False)
    with pytest.raises(ConfigError, match=r"tuning.rx_batch \(line 3\): expected true/false"):
        parse_config(GOOD.replace("[underlay]", "[tuning]\nrx_batch = 1\n[underlay]", 1))


def test_kernel_paths_of_the_native_tunnels() -> None:
    default = parse_config(GOOD).tuning
    assert (default.tx_ring, default.rx_taps) == (True, "ring")
    cfg = parse_config(
        GOOD.replace("[underlay]", '[tuning]\ntx_ring = false\nrx_taps = "recvmmsg"\n[underlay]', 1)
    )
    assert (cfg.tuning.tx_ring, cfg.tuning.rx_taps) == (False, "recvmmsg")
    with pytest.raises(
        ConfigError, match=r'tuning.rx_taps \(line 3\): .*use "ring", "recvmmsg" or "off"'
    ):
        parse_config(GOOD.replace("[underlay]", '[tuning]\nrx_taps = "mmap"\n[underlay]', 1))


def test_metrics_off_by_default() -> None:
    cfg = parse_config(GOOD)
    assert cfg.metrics.listen is None and not cfg.metrics.enabled


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9723", ("127.0.0.1", 9723)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9723", ("::1", 9723)),
        ("[::]:65535", ("::", 65535)),
    ],
)
def test_metrics_listen(listen: str, expected: tuple[str, int]) -> None:
    cfg = parse_config(GOOD.replace("[underlay]", f'[metrics]\nlisten = "{listen}"\n[underlay]', 1))
    assert cfg.metrics.listen == expected and cfg.metrics.enabled


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('listen = "127.0.0.1"', "metrics.listen (line 3): '127.0.0.1' is not host:port"),
        ('listen = ":9723"', "metrics.listen (line 3): ':9723' is not host:port"),
        ('listen = "localhost:9723"', "'localhost' is not an IPv4/IPv6 address"),
        ('listen = "::1:9723"', "put an IPv6 address in brackets"),
        ('listen = "[127.0.0.1]:9723"', "brackets are only for IPv6"),
        ('listen = "127.0.0.1:0"', "'0' is not a TCP port; use 1..65535"),
        ('listen = "127.0.0.1:70000"', "'70000' is not a TCP port"),
        ('listen = "127.0.0.1:http"', "'http' is not a TCP port"),
        ("listen = 9723", "metrics.listen (line 3): expected a string, got int"),
        ('listen = "127.0.0.1:9723"\nport = 1', "metrics.port (line 4): unknown key"),
    ],
)
def test_metrics_errors(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace("[underlay]", f"[metrics]\n{line}\n[underlay]", 1))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_metrics_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^metrics \(line 2\): expected a table"):
        parse_config(GOOD.replace("[underlay]", 'metrics = "127.0.0.1:9723"\n[underlay]', 1))


BGP = (
    GOOD
    + """\
rd = "10.0.0.1:9"
route_targets = ["65000:43"]
[bgp]
asn = 65001
neighbors = [{ address = "10.0.0.254", asn = 65000 }, { address = "fd00::fe", asn = 65000 }]
hold_time = 6
"""
)


def test_bgp_parses_with_the_router_id_from_the_underlay() -> None:
    cfg = parse_config(BGP)
    assert cfg.bgp is not None
    assert (cfg.bgp.asn, cfg.bgp.router_id, cfg.bgp.hold_time) == (65001, "10.0.0.1", 6)
    assert [(n.address, n.asn) for n in cfg.bgp.neighbors] == [
        ("10.0.0.254", 65000),
        ("fd00::fe", 65000),
    ]
    assert cfg.networks[1].rd == "10.0.0.1:9"
    assert cfg.networks[1].route_targets == ("65000:43",)
    assert cfg.networks[0].rd is None and cfg.networks[0].route_targets == ()
    assert parse_config(GOOD).bgp is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("asn = 65001", "asn = 0", "bgp.asn (line 24): 0 is not an AS number"),
        ("asn = 65001", 'asn = "x"', "bgp.asn (line 24): expected an integer"),
        ("hold_time = 6", "hold_time = 2", "bgp.hold_time (line 26): 2 s is out of range"),
        ('address = "10.0.0.254"', 'address = "10.0.0.1"', "is this endpoint"),
        ('address = "10.0.0.254", asn', 'adress = "10.0.0.254", asn', "bgp.neighbors (line 25)"),
        ('address = "10.0.0.254"', 'address = "fd00::fe"', "appears twice"),
        ('rd = "10.0.0.1:9"', 'rd = "red"', "network[1].rd (line 21): 'red' is not"),
        ('["65000:43"]', '["65000"]', "network[1].route_targets (line 22)"),
        ("hold_time = 6", "hold_time = 6\ncolour = 1", "bgp.colour (line 27): unknown key"),
    ],
)
def test_bgp_errors_name_the_key_and_line(old: str, new: str, expected: str) -> None:
    assert old in BGP
    with pytest.raises(ConfigError) as info:
        parse_config(BGP.replace(old, new, 1))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bgp_needs_a_router_id_on_an_ipv6_underlay() -> None:
    text = BGP.replace('local = "10.0.0.1"', 'local = "fd00::1"')
    with pytest.raises(ConfigError, match=r"bgp\.router_id: missing"):
        parse_config(text)
    cfg = parse_config(text.replace("asn = 65001", 'asn = 65001\nrouter_id = "10.0.0.1"'))
    assert cfg.bgp is not None and cfg.bgp.router_id == "10.0.0.1"


def test_a_vxlan_sclp_network_with_bgp_needs_its_own_vxlan_port() -> None:
    text = BGP.replace("sclp_udp_port = 7300", "sclp_udp_port = 4789")
    with pytest.raises(ConfigError, match=r"sclp_udp_port: 4789 is also underlay\.vxlan_port"):
        parse_config(text.replace('protocol = "vxlan"\n', 'protocol = "vxlan-sclp"\n'))
