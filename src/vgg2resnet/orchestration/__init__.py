"""What the Prefect flows and the demo call: DVC stages through DVC's API, the GPU hand-off, ingest."""
