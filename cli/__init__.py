"""The ``lookalike`` command line: index a catalogue, read lookalikes, score them, start workers
and the web server, upgrade the database.

Owns the terminal: arguments, progress bars, messages and exit codes. Without a broker it runs
jobs in this process (``cli.in_process``), through the same ``core.job_steps`` as the workers.
May import ``core``, ``migrations``, ``worker`` and ``web``; nothing imports it.
"""
