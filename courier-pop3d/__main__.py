"""python -m courier_pop3d."""

import sys

from courier_pop3d.main import main

sys.exit(main())
