"""`python -m courier_authd -C ETC`."""

import sys

from courier_authd.main import main

sys.exit(main())
