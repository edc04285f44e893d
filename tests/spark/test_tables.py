"""Which reader reads a location: Spark's own where Hadoop has a filesystem for the scheme. The check
goes through pyspark's private JVM gateway (``_jvm``, ``_jsc``; there is no public way to ask): this
test fails loudly if that changes."""
from __future__ import annotations

from pipelines.tables import spark_reads


def test_spark_reads_what_hadoop_has_a_filesystem_for_and_dlpipe_reads_the_rest(spark, tmp_path):
    assert spark_reads(spark, str(tmp_path))  # local files: always Spark's
    assert spark_reads(spark, "hdfs://namenode:8020/data")  # the HDFS client ships with Spark
    assert not spark_reads(spark, "s3://bucket/data")  # no hadoop-aws here: dlpipe's storage layer reads it
    assert not spark_reads(spark, "hdfs://namenode:8020/data", reader="python")  # the setting decides
    assert spark_reads(spark, "s3://bucket/data", reader="spark")
