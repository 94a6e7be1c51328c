"""The discrete-event engine (simpy): GPUs run their streams; collectives rendezvous over the network."""
