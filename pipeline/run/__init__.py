"""Orchestration: discovery (inventory), the runner and each image's steps, the orphan sweep, applying
metadata, the download gate, and the read-only commands' work (plan, verify, status, check, the HTML report,
the demo).

May import every layer below it (transfer, plan, cloud, report, state, config) and the emulator (the demo);
only ``cli`` imports it.
"""
