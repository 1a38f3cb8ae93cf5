"""Doing the copy: the engine (one source read fanned out to every target, verified on the fly), the targets'
uploads and read-back, the fan-out, source reading and resume, the spool, hashing, bandwidth, and creating or
deleting a copy so that a resent request is harmless.

May import ``cloud``, ``plan``, ``report`` (events), ``state`` (failpoints), ``config`` and the shared
modules; never ``run`` or ``cli``.
"""
