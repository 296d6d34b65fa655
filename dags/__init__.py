"""Airflow DAGs. DAG files only wire tasks together; the logic lives in pipelines/, encoder/ and store/."""
