"""``sclp bench``: the paper's evaluation, reproducible with one command.

Strategy: one :class:`~sclp.lab.testbed.Testbed` per configuration (a protocol, a
carrier, a VM MTU, an ablation), built, pinged, measured with iperf3 VM1 → VM2 over
TCP and then UDP, ``--repeat`` times each, and torn down before the next one.  The
references run in the same topology and the same process: Linux's own VXLAN (with
its default offloads, and with TSO/GSO off on the sender's ``vx0``) and a bare veth
between the VMs.  A configuration that fails is recorded with its ``error`` and the
run goes on; only Ctrl-C (or SIGTERM) stops it early, and even then the figures
measured so far are written.

One module per concern:

- :mod:`.configs`: the configurations to measure and their selection;
- :mod:`.options`: what the run was asked to do, and its command line;
- :mod:`.machine`: CPU seconds and peak RSS from ``/proc``, the machine description;
- :mod:`.measure`: iperf3 runs and the figures around them, per configuration;
- :mod:`.goals`: the goals and the ratios a run is judged by;
- :mod:`.tables`: rows of text and the console tables;
- :mod:`.report`: the JSON report and the Markdown page;
- :mod:`.plot`: the PNG chart (matplotlib, optional extra ``plot``);
- :mod:`.run`: the run itself and ``sclp bench``'s exit status.
"""
