"""Starting Spark for stage 1: the Java check, and a session whose Python workers start with stage 1 imported.

A local session (``local[N]``) needs no network: no UI, the driver on 127.0.0.1, few shuffle partitions, this
Python for the workers (so they import this package), and ``spark_daemon`` as Spark's Python daemon: it imports
stage 1's modules (Streaming, NumPy, the tokenizers) once, before it forks the workers, so no task pays for them.
On a cluster, pass ``--conf spark.python.daemon.module=meco_callbacks.corpus.documents.spark_daemon`` to
spark-submit for the same.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from meco_callbacks.corpus.storage.errors import ConversionError

JAVA_INSTALL = (
    'Install one, e.g. `apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or `brew install openjdk@17` '
    '(macOS), or point JAVA_HOME at one; convert/documents.py converts without Java.'
)
DAEMON_MODULE = 'meco_callbacks.corpus.documents.spark_daemon'


def require_java() -> str:
    """The ``java`` that Spark will start, or a ConversionError saying how to install one."""
    home = os.environ.get('JAVA_HOME')
    if home:
        candidate, missing = os.path.join(home, 'bin', 'java'), f'JAVA_HOME={home} holds no bin/java'
    else:
        candidate, missing = shutil.which('java'), '`java` is not on PATH and JAVA_HOME is not set'
    if not candidate or not os.access(candidate, os.X_OK):
        raise ConversionError(
            f'Spark needs a Java runtime (Java 8, 11 or 17) and none was found: {missing}. {JAVA_INSTALL}'
        )
    return candidate


def spark_session(master: str | None = None, app_name: str = 'meco-spark-convert') -> Any:
    """The active Spark session, or a new one on ``master`` (default: spark-submit's, else ``local[*]``).

    A local master gets the session described in the module docstring. Under spark-submit (which starts the JVM
    and says so in ``PYSPARK_GATEWAY_PORT``) its master and settings are kept.
    """
    require_java()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master is None and 'PYSPARK_GATEWAY_PORT' in os.environ:
        return builder.getOrCreate()
    master = master or 'local[*]'
    builder = builder.master(master)
    if master.startswith('local'):
        os.environ.setdefault('PYSPARK_PYTHON', sys.executable)
        builder = (
            builder.config('spark.ui.enabled', 'false')
            .config('spark.driver.host', '127.0.0.1')
            .config('spark.driver.bindAddress', '127.0.0.1')
            .config('spark.sql.shuffle.partitions', '4')
            .config('spark.python.daemon.module', DAEMON_MODULE)
        )
    return builder.getOrCreate()


def task_readable(spark: Any, pattern: str) -> str | None:
    """``pattern`` as a local path when Spark would read it from the local filesystem (a path on a ``local``
    master, ``file:``), which every task then reads itself; None for what only Spark's Hadoop client reaches."""
    if pattern.startswith('file:'):
        return '/' + pattern.removeprefix('file:').lstrip('/')
    scheme = pattern.split('/', 1)[0]
    if scheme.endswith(':') or '://' in pattern:
        return None
    default_fs = spark.sparkContext._jsc.hadoopConfiguration().get('fs.defaultFS') or 'file:///'
    return pattern if default_fs.startswith('file:') else None
