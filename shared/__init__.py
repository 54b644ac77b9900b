"""Code shared by the handler and the timer functions."""
