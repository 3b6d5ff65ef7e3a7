"""python -m courier_imapd."""

import sys

from courier_imapd.main import main

sys.exit(main())
