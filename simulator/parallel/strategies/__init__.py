"""parallel/strategies."""
