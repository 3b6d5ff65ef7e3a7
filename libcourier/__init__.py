"""libcourier: what every courier-py daemon shares (config, listener, Maildir, MIME, spool)."""

__version__ = "0.1.0"
