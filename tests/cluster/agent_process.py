"""A cluster agent in a process of its own, for the tests that kill it with SIGKILL.

``python -m tests.cluster.agent_process URL PREFIX TTL NAME ADDRESS`` registers
NAME (vni 42, vxlan-sclp over the UDP carrier), prints ``registered`` once its lease
exists, and runs until it is killed.
"""

from __future__ import annotations

import sys
import time

from sclp.cluster.agent import ClusterAgent
from sclp.cluster.model import Member


def main() -> None:
    url, prefix, ttl, name, address = sys.argv[1:6]
    me = Member(name, address, "udp", 7234, {42: "vxlan-sclp"})
    agent = ClusterAgent([url], prefix, int(ttl), me, lambda view: None)
    agent.start()
    while agent.status()["lease_id"] is None or not agent.status()["connected"]:
        time.sleep(0.01)
    print("registered", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
