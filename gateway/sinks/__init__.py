"""Where readings go after the buffer."""
