"""`python -m courier_smtpd`."""

import sys

from courier_smtpd.main import main

sys.exit(main())
