"""Containers on the overlay through the runtimes' CNI: the ``sclp-cni`` plugin
(:mod:`sclp.cni.plugin`) and the ``sclp-ipam`` address plugin backed by the cluster's
etcd (:mod:`sclp.cni.ipam`); docs/containers.md."""
