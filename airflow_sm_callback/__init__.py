"""Apache Airflow provider for Amazon SageMaker Pipelines callback steps."""

from __future__ import annotations

__version__ = "0.1.0"
