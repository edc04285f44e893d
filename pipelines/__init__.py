"""dlpipe pipelines: Spark ETL, Horovod training in a barrier stage, Spark UDF inference.

Stages are packages (``etl``, ``train``, ``infer``, with ``launcher`` starting the ranks); the
modules beside them are shared: ``config``, ``session``, ``publish``, ``dataset`` (the dataset
format), ``artifact`` (the model artifact), ``report``, ``progress``, ``run`` (all stages under
one run id) and ``cli``. ``python -m pipelines VERB ...`` is the one command-line entry.
"""
