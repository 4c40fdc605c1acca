"""Airflow DAG: the nightly labelbeam build, through the Beam provider's Python operator.

Needs apache-airflow-providers-apache-beam on the Airflow side. Each run builds the snapshot as of the
end of its data interval (midnight UTC for this daily schedule), so a retried or backfilled run of a
night publishes the same version or says "up to date" (labelbeam build --as-of).
"""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

LOG = "gs://my-bucket/log/events"        # where `labelbeam ingest` writes its curated log
DATASETS = "gs://my-bucket/datasets"
DATASET = "pets"

with DAG(
    dag_id="labelbeam_nightly",
    schedule="0 2 * * *",                 # 02:00 UTC, once yesterday's late hours have closed
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["labelbeam"],
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="build",
        runner="DataflowRunner",
        # The operator runs `python <py_file> --key=value ...`; labelbeam's build module is that file.
        py_file="{{ var.value.get('labelbeam_build_py', '/opt/labelbeam/pipelines/build.py') }}",
        py_requirements=["labelbeam[gcp]"],
        py_system_site_packages=False,
        pipeline_options={
            "input": LOG,
            "output": DATASETS,
            "dataset": DATASET,
            "as-of": "{{ data_interval_end.strftime('%Y-%m-%dT%H:%M:%SZ') }}",
            "max-invalid-share": "0.2",
            "min-agreement": "0.5",
            "project": "my-project",
            "region": "europe-west1",
            "temp_location": "gs://my-bucket/tmp",
            "setup_file": "/opt/labelbeam/setup.py",
        },
    )
