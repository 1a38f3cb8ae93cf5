"""Pure decisions: which source images are selected, what provenance marks a copy, what metadata a copy should
have and the minimal diff to get there, and the plan of every image x target (planner, intent).

No I/O at all. May import ``config``, ``state.records`` (pure), ``models``, ``errors``, ``units``; never
``cloud``, ``transfer``, ``run``, the journal file or the lock, nor aiohttp/anyio/aiofiles (contract
"pure-decisions" in pyproject.toml).
"""
