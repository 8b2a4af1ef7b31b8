"""Spark's Python daemon for stage 1 (``spark.python.daemon.module``): PySpark's own, with the conversion's
modules imported before it forks each worker, so a task starts with Streaming, NumPy and the tokenizers loaded
(several seconds of imports per worker otherwise, on every job after the workers idled out)."""

if __name__ == '__main__':
    from pyspark.daemon import manager

    import meco_callbacks.corpus.documents.spark_conversion  # noqa: F401  (and, through it, all of stage 1)

    manager()
