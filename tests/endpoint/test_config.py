import fnmatch
import itertools
from pathlib import Path

import pytest

from sclp.endpoint.config import (
    TABLE_KEYS,
    ConfigError,
    Protocol,
    _Reader,
    etcd_url_problem,
    load_config,
    parse_config,
    shortest_match,
)
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
        ("vni = 43", "vni = 42", "network[1].vni (line 17): 42 appears twice"),
        ('tap = "tap43"', 'tap = "tap42"', "network[1].tap (line 19): 'tap42' appears twice"),
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


# -- hostile input: every problem is one line naming the key, its line and the fix ----

LINE7 = "[[network]]\nvni = 42"  # GOOD's line 7 and 8: a table put in front lands on line 7


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _before_networks(table: str) -> str:
    """GOOD with ``table`` (header and keys) written in front of its first network,
    so the table's header is line 7."""
    assert LINE7 in GOOD
    return GOOD.replace(LINE7, f"{table}\n{LINE7}", 1)


def _load_error(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_load_config_refuses_non_utf8_directories_and_unreadable_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(GOOD.encode().replace(b'"host1"', b'"h\xf6st1"'))
    message = _load_error(latin1)
    assert message == (
        f"config file {latin1} (line 1): byte 0xf6 is not UTF-8 text; "
        "save the file as UTF-8 (TOML files are UTF-8)"
    )
    message = _load_error(tmp_path)
    assert message == (
        f"cannot read config file {tmp_path}: it is a directory; give the endpoint's .toml file"
    )
    assert "name is empty" in (_load_error(""))
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (2 << 20))
    assert "larger than 1 MiB" in (_load_error(huge))
    not_a_dir = latin1 / "x.toml"
    assert "Not a directory" in (_load_error(not_a_dir))

    def refuse(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    message = _load_error(tmp_path / "x.toml")
    assert message.endswith("x.toml: Permission denied; check its permissions")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[limits]\nreasm_timeout = nan", "limits.reasm_timeout (line 8): nan is not a finite"),
        ("[limits]\nfdb_aging = inf", "limits.fdb_aging (line 8): inf is not a finite number"),
        ("[limits]\nfdb_aging = -inf", "limits.fdb_aging (line 8): -inf is not a finite"),
        ("[underlay.faults]\ndrop = nan", "underlay.faults.drop (line 8): nan is not a finite"),
        ("[limits]\nreasm_timeout = 0", "limits.reasm_timeout (line 8): 0 s is out of range"),
        ("[limits]\nreasm_timeout = 1e9", "limits.reasm_timeout (line 8): 1e+09 s is out of range"),
        ("[limits]\nfdb_aging = 0.5", "limits.fdb_aging (line 8): 0.5 s is out of range; use 1"),
        (
            "[limits]\nreasm_max_bytes = 100",
            "limits.reasm_max_bytes (line 8): 100 is out of range; use 65536..",
        ),
        ("[limits]\nreasm_max_entries = 0", "limits.reasm_max_entries (line 8): 0 is out of range"),
        ("[limits]\nfdb_max_entries = -1", "limits.fdb_max_entries (line 8): -1 is out of range"),
        (
            "[limits]\nfdb_max_entries = 1_000_000_000",
            "limits.fdb_max_entries (line 8): 1000000000 is out",
        ),
        (
            "[underlay.faults]\nreorder_depth = -5",
            "underlay.faults.reorder_depth (line 8): -5 packets is out of range; use 1..1000",
        ),
        ("[underlay.faults]\nseed = -1", "underlay.faults.seed (line 8): -1 is out of range"),
        ("[underlay.faults]\ncorrupt = -0.1", "underlay.faults.corrupt (line 8): -0.1 is not a"),
    ],
)
def test_numbers_must_be_finite_and_in_range(table: str, expected: str) -> None:
    assert _error(_before_networks(table)).startswith(expected)


def test_limits_in_range_are_taken() -> None:
    cfg = parse_config(
        _before_networks("[limits]\nreasm_timeout = 0.5\nfdb_aging = 60\nreasm_max_bytes = 65536")
    )
    assert (cfg.limits.reasm_timeout, cfg.limits.fdb_aging) == (0.5, 60.0)
    assert cfg.limits.reasm_max_bytes == 65536


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'peer = "10.0.0.3"',
            "peer = 5",
            'network[0].static (line 15): 5 is not an address string; write it in quotes, e.g. "',
        ),
        ('peers = ["10.0.0.2"]', "peers = [5]", "network[0].peers (line 14): 5 is not an address"),
        ('local = "10.0.0.1"', "local = 5", "underlay.local (line 3): expected a string, got int"),
        ('peers = ["10.0.0.2"]', 'peers = ["0.0.0.0"]', "peers (line 14): '0.0.0.0' is not a uni"),
        ('peers = ["10.0.0.2"]', 'peers = ["224.0.0.1"]', "(line 14): '224.0.0.1' is not a uni"),
        ('local = "10.0.0.1"', 'local = "::"', "underlay.local (line 3): '::' is not a unicast"),
        ('peer = "10.0.0.3"', 'peer = "10.0.0.3.4"', "static (line 15): '10.0.0.3.4' is not an"),
        (
            "static = [",
            'static = [{mac = "02:00:00:00:00:07", peer = "10.0.0.4"}, ',
            "network[0].static (line 15): 02:00:00:00:00:07 appears twice; give each MAC one peer",
        ),
        ('namespace = "vm1"', 'namespace = "a/b"', "network[0].namespace (line 11): 'a/b' is not"),
        ('namespace = "vm1"', 'namespace = ""', "network[0].namespace (line 11): '' is not a net"),
        ('namespace = "vm1"', 'namespace = ".."', "network[0].namespace (line 11): '..' is not"),
        ('tap = "tap43"', 'tap = ".."', "network[1].tap (line 19): '..' is not a valid interface"),
        ('namespace = "vm1"', 'namespace = "a\\u0000b"', "namespace (line 11): 'a\\x00b' contains"),
    ],
)
def test_addresses_and_names_must_be_strings_of_the_right_kind(
    old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


@pytest.mark.parametrize(
    ("pattern", "shortest"),
    [
        ("vnet*", 4),
        ("*", 0),
        ("?", 1),
        ("[ab]c", 2),
        ("[!ab]c*", 2),
        ("[]a]", 1),
        ("[!]a]x", 2),
        ("a[b", 3),  # an unclosed [ is a literal
        ("a" * 15, 15),
        ("[ab]" * 15 + "*", 15),
    ],
)
def test_shortest_match_of_attach_patterns(pattern: str, shortest: int) -> None:
    assert shortest_match(pattern) == shortest
    if shortest <= 3:  # the shortest name fnmatch itself matches, by brute force
        names = ("".join(p) for n in range(5) for p in itertools.product("abcx]![", repeat=n))
        assert min(len(n) for n in names if fnmatch.fnmatchcase(n, pattern)) == shortest


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            "abcdefghijklmnop*",
            "network[1].attach (line 20): 'abcdefghijklmnop*' matches only names of 16 or "
            "more characters, and an interface name has at most 15; shorten the pattern",
        ),
        ("[ab]bcdefghijklmnop", "'[ab]bcdefghijklmnop' matches only names of 16 or more"),
        ("?" * 16, "matches only names of 16 or more characters"),
        ("l*", "network[1].attach (line 20): 'l*' matches lo, the host's loopback"),
        ("*", "'*' matches lo"),
    ],
)
def test_attach_patterns_that_can_never_match_or_match_host_devices(
    pattern: str, expected: str
) -> None:
    text = GOOD.replace('tap = "tap43"', f'tap = "tap43"\nattach = ["{pattern}"]', 1)
    assert expected in _error(text)


def test_attach_patterns_that_fit_are_taken() -> None:
    pattern = "[ab]" * 15 + "*"
    text = GOOD.replace('tap = "tap43"', f'tap = "tap43"\nattach = ["{pattern}", "vnet*"]', 1)
    assert parse_config(text).networks[1].attach == (pattern, "vnet*")


@pytest.mark.parametrize(
    ("protocol", "local", "mtu", "largest"),
    [
        ("vxlan", "10.0.0.1", 9000, 1450),
        ("vxlan", "10.0.0.1", 1501, 1450),
        ("geneve", "10.0.0.1", 1501, 1450),
        ("nvgre", "10.0.0.1", 1501, 1458),
        ("vxlan", "fd00::1", 1501, 1430),
        ("nvgre", "fd00::1", 9000, 1438),
    ],
)
def test_classic_tunnel_mtu_must_fit_the_underlay(
    protocol: str, local: str, mtu: int, largest: int
) -> None:
    text = GOOD.replace('local = "10.0.0.1"', f'local = "{local}"', 1).replace(
        'protocol = "vxlan"\n', f'protocol = "{protocol}"\nmtu = {mtu}\n', 1
    )
    assert _error(text) == (
        f"network[1].mtu (line 19): {mtu} is more than the underlay MTU 1500; use mtu = "
        f"{largest} (the most a {protocol} packet, {1500 - largest} bytes of headers, carries "
        "unfragmented) or at most 1500 (full-size frames then go in two fragments), or raise "
        "underlay.mtu"
    )
    for fits in (largest, 1500):  # unfragmented; fragmented in two (the benchmark's mtu1500)
        text = text.replace(f"mtu = {mtu}\n", f"mtu = {fits}\n", 1)
        assert parse_config(text).networks[1].mtu == fits
        mtu = fits


def test_segmenting_tunnels_take_any_vm_mtu_and_no_underlay_mtu_is_checked_at_start() -> None:
    sclp = GOOD.replace('mtu = 1500\npeers = ["10.0.0.2"]', 'mtu = 9000\npeers = ["10.0.0.2"]')
    assert parse_config(sclp).networks[0].mtu == 9000
    # Without underlay.mtu the file cannot know the underlay's: the check runs at start.
    jumbo = GOOD.replace("mtu = 1500\nsclp", "sclp", 1).replace(
        'protocol = "vxlan"\n', 'protocol = "vxlan"\nmtu = 9000\n', 1
    )
    cfg = parse_config(jumbo)
    from sclp.endpoint.provision import EndpointError, check_vm_mtus

    check_vm_mtus(cfg, 9000, "eth0")
    with pytest.raises(EndpointError) as info:
        check_vm_mtus(cfg, 1500, "eth0")
    assert str(info.value) == (
        "network[1].mtu (vni 43): 9000 is more than the underlay MTU 1500 (of eth0); use mtu "
        "= 1450 (the most a vxlan packet, 50 bytes of headers, carries unfragmented) or at "
        "most 1500 (full-size frames then go in two fragments), or raise the MTU of eth0"
    )


def test_control_dir_must_be_absolute_and_short_enough() -> None:
    relative = GOOD.replace('name = "host1"', 'name = "host1"\ncontrol_dir = "run/sclp"')
    assert _error(relative) == (
        "control_dir (line 2): 'run/sclp' is not an absolute path; "
        'write e.g. control_dir = "/run/sclp"'
    )
    long = GOOD.replace('name = "host1"', f'name = "host1"\ncontrol_dir = "/{"d" * 100}"')
    assert "more than a Unix socket path can hold (107)" in _error(long)
    ok = GOOD.replace('name = "host1"', 'name = "host1"\ncontrol_dir = "/tmp/sclp"')
    assert parse_config(ok).control_socket == "/tmp/sclp/host1.sock"


def test_an_empty_cluster_table_is_refused() -> None:
    assert _error(_before_networks("[cluster]")) == (
        "cluster (line 7): empty [cluster]; add etcd = [...] or remove the table"
    )
    inline = GOOD.replace('name = "host1"', 'name = "host1"\ncluster = {}')
    assert _error(inline).startswith("cluster (line 2): empty [cluster]")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.5:notaport", "the port must be a number 1..65535"),
        ("http://10.0.0.5:99999", "the port must be a number 1..65535"),
        ("http://10.0.0.5:0", "the port must be 1..65535"),
        ("http://a:b:c", "'a:b:c' is not host:port"),
        ("http://fd00::5:2379", "put an IPv6 address in brackets"),
        ("http://[fd00::zz]:2379", "'fd00::zz' in brackets is not an IPv6 address"),
        ("http://[10.0.0.5]:2379", "is not an IPv6 address"),
        ("http://user:pw@10.0.0.5:2379", "has a user name"),
        ("http://10.0.0.5:2379/v3", "has a path, query or fragment"),
        ("http://10.0.0.5:2379?x=1", "has a path, query or fragment"),
        ("http://10.0.0.5:2379#top", "has a path, query or fragment"),
        ("ftp://10.0.0.5:2379", "does not start with http:// or https://"),
        ("10.0.0.5:2379", "does not start with http:// or https://"),
        ("http://:2379", "has no host"),
        ("http://ho st:2379", "is empty or has spaces"),
        ("http://under_score:2379", "'under_score' is not a host name or address"),
        ("", "is empty or has spaces"),
    ],
)
def test_etcd_urls_are_validated_fully(url: str, expected: str) -> None:
    message = _error(_before_networks(f'[cluster]\netcd = ["{url}"]'))
    assert message.startswith(f"cluster.etcd (line 8): {url!r}"), message
    assert expected in message and message.endswith('write URLs like "http://10.0.0.5:2379"')
    assert etcd_url_problem(url) is not None


def test_good_etcd_urls() -> None:
    urls = [
        "http://10.0.0.5:2379",
        "http://10.0.0.5",
        "https://etcd.example.org:2379/",
        "http://[fd00::5]:2379",
        "http://localhost:1",
    ]
    text = _before_networks(f"[cluster]\netcd = {urls!r}".replace("'", '"'))
    cluster = parse_config(text).cluster
    assert cluster is not None and cluster.etcd[2] == "https://etcd.example.org:2379"
    assert all(etcd_url_problem(u) is None for u in urls)
    assert etcd_url_problem(5) == "5 is not a string"


def test_cluster_tls_files_must_be_readable_files(tmp_path: Path) -> None:
    base = '[cluster]\netcd = ["https://10.0.0.5:2379"]\n'
    message = _error(_before_networks(base + f'ca = "{tmp_path}"'))
    assert message == f"cluster.ca (line 9): {tmp_path} is not a readable file: it is a directory"
    message = _error(_before_networks(base + 'ca = "/nonexistent.pem"'))
    assert (
        message == "cluster.ca (line 9): /nonexistent.pem is not a readable file: it does not exist"
    )
    message = _error(_before_networks(base + f'key = "{tmp_path}"'))
    assert message == "cluster.key (line 9): cert is missing; give both cert and key"


def test_single_bracket_network_says_to_write_double_brackets() -> None:
    text = GOOD.split("[[network]]")[0] + '[network]\nvni = 42\ntap = "tap42"\n'
    assert _error(text) == (
        "network (line 7): write [[network]] (double brackets) for each network, not [network]"
    )
    no_tables = GOOD.split("[[network]]")[0]
    assert _error(no_tables.replace('name = "host1"', 'name = "host1"\nnetwork = [1]', 1)) == (
        "network (line 2): network[0] is int, not a table; "
        "write a [[network]] table for each network"
    )


def test_top_level_key_written_after_a_table() -> None:
    text = GOOD.replace('name = "host1"\n', "").replace(
        "sclp_udp_port = 7300\n", 'sclp_udp_port = 7300\nname = "host1"\n'
    )
    assert _error(text) == (
        "underlay.name (line 6): name must come before the first [table]: written after "
        "[underlay], TOML reads it as part of [underlay]"
    )
    in_network = GOOD.replace('name = "host1"\n', "").replace(
        'tap = "tap43"', 'tap = "tap43"\nname = "host1"'
    )
    assert _error(in_network).startswith(
        "network[1].name (line 19): name must come before the first [table]"
    )
    both = GOOD.replace('tap = "tap43"', 'tap = "tap43"\ncontrol_dir = "/run/x"').replace(
        'name = "host1"', 'name = "host1"\ncontrol_dir = "/run/sclp"'
    )
    assert _error(both) == (
        "network[1].control_dir (line 21): unknown key; control_dir is a top-level key: it "
        "must come before the first [table] (written after [[network]], TOML reads it as "
        "part of [[network]])"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "sclp_udp_port = 7300",
            "sclp_udp_prot = 7300",
            "underlay.sclp_udp_prot (line 6): unknown key; did you mean sclp_udp_port?",
        ),
        (
            'tap = "tap43"',
            'tap = "tap43"\nrx_batch = false',
            "network[1].rx_batch (line 20): unknown key; rx_batch belongs in [tuning]; "
            "move it under that header",
        ),
        (
            "mtu = 1500\nsclp",
            "mtu = 1500\nmtu_vm = 1\nsclp",
            "underlay.mtu_vm (line 5): unknown key; check the spelling; see docs/config.md",
        ),
        (
            'local = "10.0.0.1"',
            'local = "10.0.0.1"\nnamespce = "ul"',
            "underlay.namespce (line 4): unknown key; did you mean namespace?",
        ),
        (
            "vni = 43",
            "vnii = 43",
            "network[1].vni: missing from the [[network]] at line 16 (is 'vnii' a misspelling "
            "of it?); add vni = 42 (1..16777215)",
        ),
        (
            'tap = "tap43"',
            'tap = "tap43"\nmtu = 1400\nmtu = 1300',
            "not valid TOML",
        ),
    ],
)
def test_unknown_keys_get_a_suggestion(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        # nested [underlay.faults]: its keys carry their own lines
        ("[underlay.faults]\ndrop = 0.5\nreorder = 7", "underlay.faults.reorder (line 9)"),
        # an inline table: the line of the key that holds it
        ("[underlay.x]\n", "underlay.x (line 7): unknown key"),
    ],
)
def test_nested_tables_carry_lines(table: str, expected: str) -> None:
    assert _error(_before_networks(table)).startswith(expected)


def test_inline_tables_point_at_their_line() -> None:
    text = GOOD.replace("mtu = 1500\nsclp", "mtu = 1500\nfaults = {drop = 2}\nsclp", 1)
    assert _error(text).startswith("underlay.faults.drop (line 5): 2.0 is not a fraction")
    inline = (
        'name = "a"\n'  # 1
        'network = [{vni = 1, tap = "t1"}, {vni = 1, tap = "t2"}]\n'  # 2
        '[underlay]\nlocal = "10.0.0.1"\n'
    )
    assert _error(inline) == (
        "network[1].vni (line 2): 1 appears twice; each [[network]] needs its own VNI"
    )


def test_table_keys_name_every_key_the_parser_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """TABLE_KEYS (the hints' view of the format) lists every key the parser takes."""
    seen: dict[str, set[str]] = {}
    original = _Reader.check_unknown

    def record(self: _Reader) -> None:
        seen.setdefault(self.header.partition("#")[0], set()).update(self.used)
        original(self)

    monkeypatch.setattr(_Reader, "check_unknown", record)
    full = _before_networks(
        "[underlay.faults]\ndrop = 0.1\n[limits]\n[tuning]\n[metrics]\n"
        '[cluster]\netcd = ["http://10.0.0.5:2379"]\n'
        '[bgp]\nasn = 65001\nneighbors = [{ address = "10.0.0.254", asn = 65000 }]'
    )
    parse_config(full)
    assert set(seen) == set(TABLE_KEYS)
    for table, keys in seen.items():
        assert keys <= set(TABLE_KEYS[table]), f"add {keys - set(TABLE_KEYS[table])} to {table}"
        assert set(TABLE_KEYS[table]) <= keys, table


def test_quoted_and_dotted_keys_carry_lines_and_missing_keys_their_table() -> None:
    quoted = GOOD.replace("vni = 43", '"vni" = 16777216', 1)
    assert _error(quoted).startswith("network[1].vni (line 17): 16777216 does not fit")
    dotted = GOOD.replace("mtu = 1500\nsclp", "mtu = 1500\nfaults.drop = 2\nsclp", 1)
    assert _error(dotted).startswith("underlay.faults.drop (line 5): 2.0 is not a fraction")
    no_port = GOOD.replace('tap = "tap43"\n', "", 1)
    assert _error(no_port).startswith(
        "network[1].tap: missing from the [[network]] at line 16; add tap = "
    )


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
