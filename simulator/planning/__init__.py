"""Planning on top of the simulator: layout search (``clustersim search``), compute-optimal model and data
for a budget, and the time, cost, energy and interruptions of a training run (``clustersim plan``)."""

OBJECTIVES = ("tokens_per_s", "cost")  # what a search ranks by: throughput, or dollars per token
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86_400.0
