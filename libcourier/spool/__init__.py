"""The on-disk mail queue shared by submitters and the queue manager."""
