"""RQ jobs and worker setup."""
