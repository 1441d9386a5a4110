"""What the Prefect flows call: DVC stages in dvc.yaml's order, reproduced through DVC's API."""
