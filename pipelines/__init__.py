"""dlpipe pipelines: Spark ETL, Horovod training in a barrier stage, Spark UDF inference."""
