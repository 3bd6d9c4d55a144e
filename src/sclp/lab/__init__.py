"""The lab: the namespace testbed, ``sclp demo`` and ``sclp bench``.

Why a package of its own: these front ends build throw-away namespaces, drive
iperf3 and draw charts, none of which a production host running ``sclp run``
needs.  They sit above the endpoint (docs/architecture.md, layer 7) and only the ``sclp`` CLI
imports them, lazily, so the product never loads them or their optional
dependencies (matplotlib, extra ``plot``).
"""
