"""BGP EVPN: the pure model (routes, RD/RT, MAC mobility, the speaker's JSON),
the ExaBGP speaker and its launcher (docs/evpn.md)."""
