"""The ``casparian`` command: a click group with one module per command group.

* :mod:`.main`: the root group, its global options (``--home``, ``--tape``, ``-v``,
  ``--version``) and :func:`main`;
* :mod:`.run`: ``run``, ``demo``; :mod:`.sentinel`: ``sentinel``, ``worker``, ``start``;
  :mod:`.jobs`: ``submit``, ``jobs``, ``job show|cancel``; :mod:`.tape`: ``tape
  explain|validate``; :mod:`.bundle`: ``support-bundle``;
* :mod:`._app`: what they share (settings, the ``--tape`` recording, one-line errors).

Every command only parses its options and calls the objects the Python API uses.
"""

from .main import cli, main

__all__ = ["cli", "main"]
