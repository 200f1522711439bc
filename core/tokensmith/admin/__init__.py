"""Administration operations, one implementation for every caller.

The admin REST API (``app/admin.py``), dynamic client registration
(``app/registration.py``) and the CLI (``cli/``) all change the server through these
functions, so that they cannot disagree: each checks its input the same way, stores the
change, and writes one audit entry (``audit.record``) naming who did it, never a secret.
"""
