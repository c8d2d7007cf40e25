"""A simulated power cut for storage tests: a FUSE filesystem that forgets what was never synced."""
