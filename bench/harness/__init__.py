"""The benchmark harness behind ``bench/run.py``: stdlib only, plus tokensmith for registration.

- ``procs``: start a server (optionally pinned with ``taskset``), wait for its ready line,
  measure its resident memory, stop it; every process started is stopped.
- ``servers``: tokensmith deployments and the two reference peers, and one-off HTTPS probes.
- ``load``: the four scenarios, driven by ``bench/loadgen``, and medians over rounds.
- ``sysinfo``: the machine and the versions, for the record.
- ``report``: the Markdown tables and the targets.
"""
