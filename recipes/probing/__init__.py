"""The probing family: MRMBench probes with inference-time probing, and LRHP preference representations."""
