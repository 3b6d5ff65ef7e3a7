"""courier-pop3d: the POP3 server."""
