"""Reporting: the events the engine and runner emit, the run summary, progress bars, logging setup and the
Prometheus metrics file. It only observes.

Depends on events only: it imports its own modules and the shared ``errors``, ``models`` and ``units``, never
``state``, ``config``, ``plan``, ``cloud`` or anything above (contract "report-on-events").
"""
