"""One module per implementation: ``run_cluster(params)``, ``run_micro(params)``."""
