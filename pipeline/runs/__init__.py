"""The stage functions, one module per stage: `pipeline.runs.<stage>.run_<stage>`. A stage script imports only
its own module, so dvc.yaml can list exactly the code a stage runs."""
