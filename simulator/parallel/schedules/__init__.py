"""parallel/schedules."""
