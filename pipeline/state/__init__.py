"""What a job remembers: the journal's records folded into state (``records``, pure), the journal file
(``journal``: append-only log plus snapshots), the job lock and its one probe (``lock``), and the crash
points the suite proves durability with (``failpoints``).

May import ``errors`` only (and anyio for the off-loop fsync); nothing above it.
"""
