"""Pipeline schedules (registered by name): gpipe, 1f1b, interleaved, zero-bubble (ZB-H1), zb-h2, dualpipev."""
