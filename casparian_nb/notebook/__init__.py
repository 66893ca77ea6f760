"""The notebook layer: controller, live widgets, SQL over outputs.

Public entry points are re-exported lazily by :mod:`casparian_nb` (``cf.start``,
``cf.attach``, ``cf.Controller``, ``cf.timeline``, ``%load_ext casparian_nb``); nothing is
imported here so that ``import casparian_nb`` stays cheap.

* :mod:`.controller` — ``start``/``attach``/``Controller`` (with :mod:`._session` for the
  session tape and launched cluster, :mod:`._events` for the event thread, :mod:`._wait`,
  :mod:`._models` for Job/QueueStats/WaitResult).
* :mod:`.queue_widget` — the job-queue table (state in :mod:`._queue_model`, threading in
  :mod:`._scheduling`), front-end ``static/queue.js``.
* :mod:`.timeline` — the tape timeline, front-end ``static/timeline.js``.
* :mod:`.catalog` — the DuckDB catalog behind ``ctl.sql`` and ``%%cql`` (:mod:`.magic`), with
  :mod:`._duck` for DuckDB sink files and the state DB.

The ES modules in ``static/`` are the only copy of the front-end code (see
``extensions/README.md``); anywidget loads them from the package, no build step.
"""
