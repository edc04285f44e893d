"""ETL stage: raw records (image folders, CSV, JSON lines, Parquet) -> a published dlpipe dataset.

``job`` runs the stage (``main(spark, config)``): ``sources`` reads any source kind into one
record layout, ``validate`` decides every record (accepted, or quarantined with a reason) and its
split, ``parts`` writes the splits as Parquet with exact row groups. ``generate`` makes synthetic
digits at any scale as input for the ETL. The format it writes is ``pipelines.dataset``'s.
"""
