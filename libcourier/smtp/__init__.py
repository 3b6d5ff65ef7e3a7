"""SMTP grammar, reply codes and dot-stuffing, shared by courier-smtpd and courier-deliver."""
