"""courier-smtpd: the ESMTP server (port 25, submission, SMTPS)."""
