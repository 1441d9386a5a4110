"""One module per dvc.yaml stage, each with a single public `run(params)`."""
