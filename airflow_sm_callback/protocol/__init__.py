"""The SageMaker Pipelines callback-step protocol, in plain Python (no Airflow)."""
