"""The cluster registry on etcd: endpoints register under a lease, publish the MACs
they learned, and watch each other (docs/cluster.md).

:mod:`~sclp.cluster.model` is pure (records, the view of one endpoint);
:mod:`~sclp.cluster.etcd` talks to etcd's JSON gateway with failover between URLs;
:mod:`~sclp.cluster.agent` keeps one endpoint registered and its view current from
one background thread.  Nothing here imports the endpoint, the lab or the CLI.
"""
