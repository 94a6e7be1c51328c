"""Upper bounds where no real model or cluster goes (issue #12, "Bounded work").

Past them the parameter count loops for minutes, the graph takes gigabytes, or the simulated clock loses
its resolution. Each is 8x or more the largest published figure, so no real configuration is refused; a
value past one is a ``ScenarioError`` naming the field, before any work. Kept in one module at the bottom
of docs/design.md's order (beside ``units``) so the schema, the topology loader and the engine share them.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------- the model
MAX_LAYERS = 2048  # deepest published: Llama 3 405B 126, PaLM 540B 118 (Dubey 2024; Chowdhery 2022)
MAX_HIDDEN = 262_144  # widest: PaLM 540B 18,432, GPT-3 175B 12,288
MAX_HEADS = 8192  # Llama 3 405B 128, GPT-3 96
MAX_HEAD_DIM = 8192  # 128 is usual, Gemma 256
MAX_FFN_HIDDEN = 1_048_576  # PaLM 540B 73,728; Llama 3 405B 53,248
MAX_VOCAB = 16_777_216  # Gemma 256,000; Llama 3 128,256
MAX_EXPERTS = 65_536  # Switch-C 2,048 (Fedus 2021); DeepSeek-V3 256
MAX_LATENT_DIM = 262_144  # MLA ranks and head dims (DeepSeek-V3: kv_lora_rank 512, q_lora_rank 1,536)

# ---------------------------------------------------------------------------------------- the training
MAX_SEQ_LEN = 16_777_216  # Llama 4 Scout's 10M-token context is the longest announced (Meta, 2025)
MAX_BATCH = 16_777_216  # sequences; Llama 3 405B: 16M tokens = 2,048 sequences of 8,192
# Zipf exponent of expert popularity: at 16 the second expert gets 2^-16 of the first's tokens (all on
# one expert already); measured routers sit well below 2.
MAX_SKEW = 16.0
MAX_CAPACITY_FACTOR = 1024.0  # 1.0-2.0 in practice (GShard, Switch); above experts/top_k nothing drops
MAX_BUCKET_MB = 1_048_576.0  # 1 TiB gradient bucket; PyTorch DDP's default bucket_cap_mb is 25
MAX_USD_PER_GPU_HOUR = 10_000.0  # cloud list prices are 1-15 USD per GPU-hour (2025)
MAX_TRAIN_TOKENS = 1e18  # tokens a run trains; Llama 3 405B trained on 1.56e13 (Dubey 2024, Sec. 3.1)
MAX_SEED = 2**63 - 1

# ------------------------------------------------------------------------------------------ the cluster
MAX_NODES = 65_536  # hosts: 524,288 GPUs at 8 per host
MAX_GPUS = 524_288  # over twice xAI Colossus' 200,000 GPUs, the largest announced cluster (2025)
MAX_HOST_GPUS = 1024  # GPUs of one host or NVLink domain; NVIDIA's announced NVL576 rack is the largest
MAX_DEGREE = MAX_GPUS  # a parallel degree (tp, pp, dp, cp, ep) spans at most every GPU
MAX_STAGES = 1024  # virtual pipeline stages per rank, and entries of pp_layers
# Any other count in a topology document (NICs, switches, radix, an explicit link's count): 2^20 is far
# above a 64-port switch's or a 16,384-switch fabric's figures.
MAX_TOPOLOGY_COUNT = 1_048_576
# Any other number in a topology document (bandwidths in GB/s, latencies in s): 10^9 GB/s is a million
# times NVLink 5's 1,800 GB/s per GPU (NVIDIA B200 datasheet); a latency of 10^9 s is 31 years.
MAX_TOPOLOGY_NUMBER = 1e9
