"""``resnetlab bench``: latency, throughput and peak memory of the models, one row per setting.

measure (timing), memory (peak memory of one call), hardware (the CPU's FP32 peak),
report (rows as a table, CSV and JSON), plots (PNGs), run (the rows of a whole benchmark).
"""
