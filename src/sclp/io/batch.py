"""Compatibility alias: the batch classes now live in :mod:`sclp.io._mmsg` and are used
through :class:`sclp.io.rawip.RawIpSocket` (``send_strided``, ``recv_batch``) and
:class:`sclp.io.packet.PacketTap`.

Only :mod:`sclp.endpoint.nve` still imports this module; delete it once the endpoint
uses those adapters.
"""

from __future__ import annotations

from sclp.io._mmsg import BatchReceiver, StridedSender, v4_key
from sclp.io._mmsg import encode_sockaddr as sockaddr_in

__all__ = ["BatchReceiver", "StridedSender", "sockaddr_in", "v4_key"]
