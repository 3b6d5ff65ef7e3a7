"""esmtpd's protocol core: libcourier.smtp.server, re-exported under the name every
daemon uses for its core (STYLE.md's layout).

The core lives in libcourier because two daemons drive it: esmtpd (session.py, over
TCP) and `sendmail -bs` (courier_deliver.stdiosmtp, over a pipe), and daemons share
only through libcourier. Edit the protocol there.
"""

from libcourier.smtp.server import *  # noqa: F401,F403
