"""courier-imapd: the IMAP4rev1 server."""
