"""Unit constants. Inside the engine everything is SI: seconds, bytes, bytes/s, FLOP, FLOP/s.

Naming convention in files and code: ``_gbps`` is gigabytes per second (1e9 B/s), the unit nccl-tests
reports; network line rates quoted in gigabits are converted where they are read (HDR 200 Gb/s = 25 GB/s).
"""

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 1024.0
MiB = 1024.0**2
GiB = 1024.0**3
TFLOP = 1e12
US = 1e-6
MS = 1e-3

BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
