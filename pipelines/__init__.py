"""dlpipe pipelines: Spark ETL, distributed PyTorch training in a barrier stage, Spark inference.

Stages are packages (``etl``, ``train``, ``infer``, ``rl``, with ``launcher`` starting the ranks);
the modules beside them are shared, lowest layer first (``docs/architecture.md``): ``storage``
(every file operation, any store), the typed formats (``formats``, ``events``, ``dataset``,
``artifact``, ``checkpoints``, ``summary``), ``config`` and ``validate`` (one check per verb),
``publish`` and ``lease`` (commits and one job per run), ``session``, ``report``, ``progress``,
``run`` (all stages under one run id) and ``cli``. ``python -m pipelines VERB ...`` is the one
command-line entry.
"""
