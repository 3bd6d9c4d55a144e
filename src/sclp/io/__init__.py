"""Layer 4: thin Linux I/O adapters (TAP, UDP and raw IP sockets, namespaces, nftables).

Everything here touches the kernel and nothing here knows a tunnel format: the
endpoint hands these adapters preallocated buffers and gets back sizes, batch-first
(one frame or datagram is a batch of one), in the spirit of wireguard-go's
``tun.Device.Read(bufs, sizes, offset)`` and ``conn.Bind``.
"""
