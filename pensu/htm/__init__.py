"""The HTM engine: encoders, spatial pooler, temporal memory, likelihood and predictor.

Pure computation (numpy + numba): no I/O, no Kafka, no configuration loading.
"""
